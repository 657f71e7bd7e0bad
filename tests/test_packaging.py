"""Packaging: a copy of the package without node_modules, the pages' browser assets, the lock file."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness import ROOT, ServerProcess, free_port

# What an install from the repository has without the set-up command's npm step.
SOURCES = ("pyproject.toml", "package.json", "package-lock.json", "config.toml", "server", "namespaces", "web")


def copy_package(dest: Path, without: tuple[str, ...] = ()) -> Path:
    """Copy the package (never node_modules, .venv or the tests) to ``dest``, leaving out ``without``."""
    dest.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if name in without:
            continue
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=ignore)
        else:
            shutil.copy2(path, dest / name)
    return dest


@pytest.fixture(scope="module")
def copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The package as ``pip install .`` in a fresh checkout leaves it: no node_modules."""
    return copy_package(tmp_path_factory.mktemp("pip-only") / "realtime")


class CopiedServer(ServerProcess):
    """``python -m server`` run from the copy (its own ``server`` package and config.toml)."""

    def __init__(self, copy: Path, env: dict[str, str] | None = None) -> None:
        super().__init__(env=env)
        self.cwd = copy

    def start(self, wait: bool = True) -> "CopiedServer":
        self.proc = subprocess.Popen([sys.executable, "-m", "server"], cwd=self.cwd, env=self.env,
                                     stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_healthy()
        return self


@pytest.fixture
def copied(copy: Path):
    """Start servers from the copy: ``copied(env={...})``; all stopped at the end."""
    started: list[CopiedServer] = []

    def start(env: dict[str, str] | None = None) -> CopiedServer:
        proc = CopiedServer(copy, env)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        proc.kill()


def run(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m server`` in ``cwd`` to completion (it is expected to refuse to start)."""
    full = {**os.environ, "HOST": "127.0.0.1", "PORT": str(free_port()), **env}
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=cwd, env=full,
                          capture_output=True, text=True, timeout=30)


def one_config_error(out: subprocess.CompletedProcess) -> str:
    """The single ``config error:`` line a refused start prints (exit code 2)."""
    assert out.returncode == 2, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: "), out.stderr
    return lines[0]


def page_assets() -> list[str]:
    """Every /vendor/ and /admin-ui/ URL the pages reference (scripts, import maps, links)."""
    urls: set[str] = set()
    for page in (ROOT / "web").glob("*.html"):
        text = page.read_text()
        urls.update(re.findall(r'"(/(?:vendor|admin-ui)/[^"]*)"', text))
    # The import map maps "lib0/" to a folder: the editor loads modules from inside it.
    return sorted(u + "observable" if u.endswith("/vendor/lib0/") else u for u in urls)


# ---------------------------------------------------------------------- issue 12: the pages' assets


def test_copy_without_node_modules_refuses_naming_the_missing_step(copy: Path):
    line = one_config_error(run(copy, {}))
    assert "server.pages" in line
    assert "npm ci" in line  # the missing step
    assert "$ASSETS_DIR" in line and "$PAGES" in line  # the two ways around it
    for package in ("socket.io-client", "yjs", "@socket.io/admin-ui"):
        assert package in line


def test_copy_with_pages_off_starts_as_a_backend(copied):
    srv = copied(env={"PAGES": "false"})
    assert srv.get("/healthz")[0] == 200
    status, body = srv.get("/socket.io/?EIO=4&transport=polling")
    assert status == 200 and body.startswith("0{")  # the Engine.IO handshake
    for path in ("/", "/chat.html", "/vendor/socket.io.min.js", "/admin-ui/"):
        assert srv.get(path)[0] == 404, path


def test_copy_serves_the_pages_from_an_assets_dir_elsewhere(copied):
    srv = copied(env={"ASSETS_DIR": str(ROOT / "node_modules")})
    assert srv.get("/")[0] == 200 and srv.get("/chat.html")[0] == 200
    for url in page_assets():
        assert srv.get(url)[0] == 200, url


def test_checkout_serves_every_asset_the_pages_reference(server):
    urls = page_assets()
    assert {"/vendor/socket.io.min.js", "/vendor/yjs.mjs", "/vendor/lib0/observable", "/admin-ui/"} <= set(urls)
    for url in urls:
        assert server.get(url)[0] == 200, url
    assert 'localStorage.setItem("namespace", "/admin")' in server.get("/admin-ui/")[1]
    assert server.get("/vendor/socket.io.msgpack.min.js")[0] == 200
    assert server.get("/vendor/lib0/../../package.json")[0] == 404  # nothing outside the packages


def test_assets_dir_without_the_assets_refuses(tmp_path: Path):
    line = one_config_error(run(ROOT, {"ASSETS_DIR": str(tmp_path)}))
    assert "server.assets_dir (from $ASSETS_DIR)" in line and str(tmp_path) in line and "npm ci" in line


def test_pages_key_is_validated(tmp_path: Path):
    line = one_config_error(run(ROOT, {"PAGES": "maybe"}))
    assert "server.pages (from $PAGES): expected true or false, got 'maybe'" in line
    cfg = tmp_path / "c.toml"
    cfg.write_text("[server]\npages = false\nassets_dir = 3\n")
    line = one_config_error(run(ROOT, {}, "--config", str(cfg)))
    assert f"server.assets_dir (from {cfg}): expected a string, got 3" in line


def test_installed_package_without_the_pages_refuses_naming_them(tmp_path: Path):
    """Installed into site-packages, the package has no web/ beside it: say so, and how to go on."""
    bare = copy_package(tmp_path / "site", without=("web", "config.toml", "package.json", "package-lock.json"))
    line = one_config_error(run(bare, {}))
    assert "web" in line and "$PAGES" in line


# ---------------------------------------------------------------------- issue 13: the lock file

LOCK = ROOT / "requirements.lock"


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def locked() -> dict[str, tuple[str, str | None, int]]:
    """requirements.lock as ``{name: (version, marker, hash count)}``; build-only packages
    (pip-compile's "unsafe" section: the build backend) are left out."""
    text = LOCK.read_text().split("# The following packages are considered to be unsafe")[0]
    out: dict[str, tuple[str, str | None, int]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\")[0].strip()
        if not first or first.startswith("#"):
            continue
        requirement, _, marker = first.partition(";")
        name, sep, version = requirement.strip().partition("==")
        assert sep, f"not pinned exactly in {LOCK.name}: {first}"
        out[canonical(name)] = (version.strip(), marker.strip() or None, block.count("--hash=sha256:"))
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def declared() -> list[str]:
    """Every requirement pyproject.toml declares: the dependencies and the test extra."""
    project = pyproject()["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["test"]]


def test_socketio_and_engineio_are_pinned_exactly_and_locked_alike():
    from packaging.requirements import Requirement

    pins = {canonical(r.name): str(r.specifier) for r in map(Requirement, declared())}
    lock = locked()
    for name in ("python-socketio", "python-engineio"):
        assert pins[name].startswith("=="), f"{name} is not pinned exactly in pyproject.toml: {pins[name]}"
        assert lock[name][0] == pins[name][2:], f"{name}: pyproject.toml {pins[name]}, lock {lock[name][0]}"


def test_lock_pins_every_dependency_with_hashes_within_what_pyproject_allows():
    from packaging.requirements import Requirement

    lock = locked()
    for requirement in map(Requirement, declared()):
        name = canonical(requirement.name)
        assert name in lock, f"{name} is declared in pyproject.toml but not in {LOCK.name}: run `make lock`"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), \
            f"{name}=={lock[name][0]} in {LOCK.name} is outside pyproject.toml's {requirement.specifier}: run `make lock`"
    for name, (_, _, hashes) in lock.items():
        assert hashes > 0, f"{name} has no hash in {LOCK.name}"
    text = LOCK.read_text()
    assert "setuptools==" in text  # the build backend is locked too: `pip install -e .` fetches nothing


def test_installed_packages_are_the_locked_versions():
    from importlib.metadata import PackageNotFoundError, version

    from packaging.markers import Marker

    wrong = []
    for name, (pinned, marker, _) in locked().items():
        if marker is not None and not Marker(marker).evaluate():
            continue
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        if installed != pinned:
            wrong.append(f"{name} {installed} (locked {pinned})")
    assert not wrong, f"not installed from {LOCK.name} (run `make install`): {', '.join(wrong)}"


def test_make_installs_from_the_locks():
    """What `make install` runs on a fresh checkout (dry run): the lock file with hashes, then the
    project without dependencies; npm packages exactly as package-lock.json has them."""
    out = subprocess.run(["make", "-n", "-B", "install"], cwd=ROOT, capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert "pip install --quiet --require-hashes -r requirements.lock" in out
    assert "pip install --quiet --no-deps --no-build-isolation -e ." in out
    assert "npm ci " in out and "npm install" not in out
    lock = subprocess.run(["make", "-n", "-B", "lock"], cwd=ROOT, capture_output=True, text=True,
                          timeout=30, check=True).stdout
    assert "pip-compile" in lock and "--generate-hashes" in lock and "--output-file requirements.lock" in lock
