"""The package boundaries the README's layout promises, checked on the source."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports (absolute names; relative ones as ``.name``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add("." * node.level + (node.module or ""))
    return found


def test_the_server_package_never_imports_the_applications_but_at_its_entry_point():
    offenders = {str(path.relative_to(ROOT)): sorted(m for m in imported_modules(path)
                                                     if m == "namespaces" or m.startswith("namespaces."))
                 for path in (ROOT / "server").rglob("*.py") if path.name != "__main__.py"}
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_core_package_depends_on_no_library_adapter_and_no_other_server_module():
    forbidden = ("socketio", "engineio", "aiohttp", "server", "namespaces")
    for path in (ROOT / "server" / "core").rglob("*.py"):
        for module in imported_modules(path):
            top = module.split(".")[0]
            assert top not in forbidden, f"{path.relative_to(ROOT)} imports {module}"
            # relative imports may only reach inside server/core
            assert not module.startswith(".."), f"{path.relative_to(ROOT)} imports {module}"


def test_the_shared_channels_package_imports_only_the_standard_library_redis_and_msgpack():
    """realtime_channels is installed alone into Django and Celery projects (channels/pyproject.toml
    declares only redis and msgpack): nothing of the server, aiohttp or python-socketio."""
    package = ROOT / "channels" / "realtime_channels"
    paths = sorted(package.rglob("*.py"))
    assert {p.name for p in paths} >= {"channel_log.py", "redis_channel_log.py", "redis_pubsub.py",
                                       "envelope.py", "emitter.py"}
    allowed = set(sys.stdlib_module_names) | {"__future__", "redis", "msgpack"}
    for path in paths:
        for module in imported_modules(path):
            where = f"{path.relative_to(ROOT)} imports {module}"
            if module.startswith("."):
                assert not module.startswith(".."), where  # only inside the package
            else:
                assert module.split(".")[0] in allowed, where


def test_the_shared_definitions_exist_once():
    """The moved modules live only in channels/realtime_channels, not also in server/."""
    moved = {"channel_log.py", "redis_channel_log.py", "redis_pubsub.py", "envelope.py", "emitter.py"}
    copies = [str(p.relative_to(ROOT)) for p in (ROOT / "server").rglob("*.py") if p.name in moved]
    assert copies == []
    init = ROOT / "server" / "core" / "__init__.py"
    stems = {name[:-3] for name in moved}
    assert init.exists()
    assert not [m for m in imported_modules(init) if m.split(".")[-1] in stems], "server/core re-exports a moved module"


def test_namespaces_reach_redis_only_through_stores():
    for path in (ROOT / "namespaces").glob("*.py"):
        text = path.read_text()
        assert "stores.redis" not in text, f"{path.name} uses the Redis client directly"
        assert not any(m.startswith("redis") and m != "redis.exceptions" for m in imported_modules(path)), path.name


def test_the_cluster_modules_get_their_dependencies_explicitly_not_a_runtime():
    """Bus, registry, forwarding and operations are given what they use in their constructors
    (server/app.py's build_runtime composes them): none imports the app or reaches into a Runtime."""
    for name in ("bus.py", "cluster.py", "forwarding.py", "operations.py"):
        path = ROOT / "server" / name
        imports = imported_modules(path)
        assert not imports & {".app", "server.app"}, f"{name} imports the app module"
        assert not re.search(r"\bruntime\b", path.read_text(), re.IGNORECASE), f"{name} mentions Runtime"
