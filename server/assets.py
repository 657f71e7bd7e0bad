"""Where the pages and their browser assets are, and what is missing of them.

The pages (``web/``) come with the repository; the JavaScript they load (socket.io-client, yjs,
the Admin UI) comes from the npm packages ``npm ci`` installs into ``node_modules`` from
``package-lock.json`` (``make install`` runs it). ``server.assets_dir`` / ``$ASSETS_DIR`` may name
a ``node_modules`` folder elsewhere. Start-up refuses when the pages are on and any of this is
missing (:func:`server.config.load_config`), so nothing is served as a 404 instead.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WEB_DIR = ROOT / "web"
DEFAULT_NODE_MODULES = ROOT / "node_modules"

# /vendor/<name> -> its file (or folder) inside node_modules.
VENDOR_FILES = {
    "socket.io.min.js": "socket.io-client/dist/socket.io.min.js",
    "socket.io.msgpack.min.js": "socket.io-client/dist/socket.io.msgpack.min.js",
    "yjs.mjs": "yjs/dist/yjs.mjs",
    "lib0": "lib0",
}
# The official Admin UI's built files, served under /admin-ui/.
ADMIN_UI_DIR = "@socket.io/admin-ui/ui/dist"
# Its index.html links its fonts (Roboto, Material Design Icons) from CDNs; they are served from
# these npm packages instead, as /admin-ui-assets/<name>/<file>, so the UI works air-gapped.
ADMIN_UI_ASSETS = {"roboto": "@fontsource/roboto", "mdi": "@mdi/font"}
ADMIN_UI_ASSET_SUFFIXES = (".css", ".woff2", ".woff", ".ttf", ".eot")
REQUIRED = (*VENDOR_FILES.values(), f"{ADMIN_UI_DIR}/index.html",
            f"{ADMIN_UI_ASSETS['roboto']}/400.css", f"{ADMIN_UI_ASSETS['mdi']}/css/materialdesignicons.min.css")


def node_modules(assets_dir: str) -> Path:
    """The node_modules folder to serve from.

    :param assets_dir: ``server.assets_dir`` as validated (an absolute path), or empty for the
                       repository's own ``node_modules``.
    """
    return Path(assets_dir) if assets_dir else DEFAULT_NODE_MODULES


def missing_packages(folder: Path) -> list[str]:
    """The npm packages whose files of :data:`REQUIRED` ``folder`` lacks (empty: the pages can be served)."""
    names = set()
    for entry in REQUIRED:
        if not (folder / entry).exists():
            parts = entry.split("/")
            names.add("/".join(parts[:2] if entry.startswith("@") else parts[:1]))  # @scope/name or name
    return sorted(names)


def is_checkout() -> bool:
    """Whether the package runs from the repository (``npm ci`` can run beside it)."""
    return (ROOT / "package-lock.json").is_file()
