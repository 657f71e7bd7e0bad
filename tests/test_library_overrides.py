"""The library internals the server relies on (server/library_pins.py) are still there, as written against.

Each check is its own test, named after the library method or attribute it is about, so an
upgrade of python-socketio or python-engineio that renames, removes or re-signs something fails
with that name, e.g. ``test_overridden_method_unchanged[socketio.async_server:AsyncServer._handle_connect]``.
"""

from __future__ import annotations

import ast
import asyncio
import functools
import importlib
import inspect
import pkgutil
import re
import textwrap
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

import namespaces
import server
from server import library_pins
from server.send_queue import SendQueue

LIBRARIES = ("socketio", "engineio")
# Class attributes every class has; defining them shadows nothing of the library's.
OWN = {"__module__", "__qualname__", "__doc__", "__dict__", "__weakref__", "__annotations__", "__slots__",
       "__firstlineno__", "__static_attributes__", "__orig_bases__", "__parameters__", "__abstractmethods__"}


def steps_of(key: str) -> tuple[str, list[tuple[str, str]]]:
    """``module:path`` -> the module and the path's steps as (dict key, attribute) pairs."""
    module, _, path = key.partition(":")
    return module, re.findall(r"\[(\w+)\]|([^.\[\]]+)", path)


def resolve(key: str, on: Any = None) -> Any:
    """The object a ``module:path`` key names: attributes by ``.``, dict keys by ``[name]``.

    :param on: an instance of the class the path starts with, to look the rest up on.
    """
    module, steps = steps_of(key)
    obj: Any = importlib.import_module(module)
    if on is not None:
        obj, steps = on, steps[1:]
    for item, attr in steps:
        obj = obj[item] if item else getattr(obj, attr)
    return obj


@functools.cache
def instances() -> dict[str, Any]:
    """Real library objects, for the attributes that exist only on an instance."""
    import socketio
    from aiohttp import web
    from aiohttp.http_websocket import WebSocketWriter
    from engineio.async_drivers.aiohttp import WebSocket
    from engineio.async_socket import AsyncSocket
    from engineio.packet import Packet as EioPacket
    from engineio.payload import Payload
    from socketio.packet import Packet as SioPacket

    sio = socketio.AsyncServer(async_mode="aiohttp")
    return {
        "socketio.async_server:AsyncServer": sio,
        "engineio.async_server:AsyncServer": sio.eio,
        "socketio.async_manager:AsyncManager": sio.manager,
        "socketio.async_namespace:AsyncNamespace": socketio.AsyncNamespace("/"),
        "engineio.async_socket:AsyncSocket": AsyncSocket(sio.eio, "sid"),
        "engineio.async_drivers.aiohttp:WebSocket": WebSocket(lambda ws: None, sio.eio),
        "socketio.packet:Packet": SioPacket(),
        "engineio.packet:Packet": EioPacket(),
        "engineio.payload:Payload": Payload(),
        "socketio.exceptions:ConnectionRefusedError": socketio.exceptions.ConnectionRefusedError("no"),
        "aiohttp.web_ws:WebSocketResponse": web.WebSocketResponse(),
        "aiohttp.http_websocket:WebSocketWriter": WebSocketWriter(None, None),  # type: ignore[arg-type]
        "aiohttp.web_server:Server": low_level_server(),
    }


def low_level_server() -> Any:
    """aiohttp's low-level server (it keeps a loop, here a closed one)."""
    from aiohttp.web_server import Server

    loop = asyncio.new_event_loop()
    loop.close()
    return Server(lambda request: None, loop=loop)  # type: ignore[arg-type, return-value]


def check(key: str, signature: str | None) -> None:
    """Fail, naming ``key``, when the library lacks it or its signature changed."""
    module, steps = steps_of(key)
    instance = instances().get(f"{module}:{steps[0][1]}") if len(steps) > 1 else None
    try:
        obj = resolve(key) if signature is not None else resolve(key, on=instance)
    except (AttributeError, KeyError, ImportError) as exc:
        pytest.fail(f"{key} is gone from the installed library ({exc!r}); see server/library_pins.py")
    if signature is not None:
        found = str(inspect.signature(obj))
        assert found == signature, f"{key} changed its signature: library has {found}, we wrote against {signature}"


# ---------------------------------------------------------------------- our subclasses of library classes


def _is_library(cls: type) -> bool:
    return cls.__module__.split(".")[0] in LIBRARIES


def our_subclasses() -> list[type]:
    """Every class in server/ and namespaces/ with a library class among its bases."""
    found: dict[str, type] = {}
    for package in (server, namespaces):
        for info in pkgutil.iter_modules(package.__path__):
            if info.name == "__main__":
                continue
            module = importlib.import_module(f"{package.__name__}.{info.name}")
            for cls in vars(module).values():
                if inspect.isclass(cls) and cls.__module__ == module.__name__ and not _is_library(cls) \
                        and any(_is_library(base) for base in cls.__mro__):
                    found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return [found[name] for name in sorted(found)]


def library_base(cls: type) -> type:
    return next(base for base in cls.__mro__ if _is_library(base))


def key_of(cls: type, name: str) -> str:
    return f"{cls.__module__}:{cls.__qualname__}.{name}"


def shadowed(cls: type) -> list[str]:
    """The keys of the library methods and class attributes ``cls`` itself redefines."""
    base = library_base(cls)
    return [key_of(base, name) for name in vars(cls) if name not in OWN and hasattr(base, name)]


def assigned(cls: type) -> set[str]:
    """The names ``cls``'s own code binds as ``self.<name> = ...``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return set()
    names = set()
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else \
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else []
        for target in targets:
            if isinstance(target, ast.Attribute) and isinstance(target.value, ast.Name) and target.value.id == "self":
                names.add(target.attr)
    return names


SUBCLASSES = our_subclasses()
ADAPTER = "server.adapter"
OUTSIDE_ADAPTER = [cls for cls in SUBCLASSES if cls.__module__ != ADAPTER]
# Each override in server/adapter.py, as (its class there, the library key), named by the key.
ADAPTER_OVERRIDES = sorted((pytest.param(cls, key, id=key) for cls in SUBCLASSES if cls.__module__ == ADAPTER
                            for key in shadowed(cls)), key=lambda p: p.id)


# ---------------------------------------------------------------------- (a) the table against the library


@pytest.mark.parametrize("key", sorted(library_pins.OVERRIDDEN))
def test_overridden_method_unchanged(key: str):
    check(key, library_pins.OVERRIDDEN[key])


@pytest.mark.parametrize("key", sorted(library_pins.USED))
def test_used_library_attribute_unchanged(key: str):
    check(key, library_pins.USED[key])


@pytest.mark.parametrize("key", sorted(library_pins.CALLED_BY_LIBRARY))
def test_library_still_calls_our_override(key: str):
    """The library function still reaches the names we override (else the override is dead code)."""
    function = resolve(key)
    names: set[str] = set()
    codes = [function.__code__]
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if inspect.iscode(c))
    missing = [name for name in library_pins.CALLED_BY_LIBRARY[key] if name not in names]
    assert not missing, f"{key} no longer uses {', '.join(missing)}: our override of it is not called any more"


# ---------------------------------------------------------------------- (b) the table is complete


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_override_is_in_the_table(cls: type):
    unlisted = [key for key in shadowed(cls) if key not in library_pins.OVERRIDDEN]
    assert not unlisted, (f"{cls.__qualname__} overrides library methods not recorded in "
                          f"server/library_pins.py OVERRIDDEN: {', '.join(unlisted)}")


@pytest.mark.parametrize("cls", SUBCLASSES, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_library_attribute_we_assign_is_in_the_table(cls: type):
    base = library_base(cls)
    instance = instances().get(f"{base.__module__}:{base.__qualname__}")
    library_names = set(dir(base)) | set(vars(instance) if instance is not None else ())
    listed = set(library_pins.OVERRIDDEN) | set(library_pins.USED)
    unlisted = [key_of(base, name) for name in sorted(assigned(cls) & library_names)
                if key_of(base, name) not in listed]
    assert not unlisted, (f"{cls.__qualname__} assigns library attributes not recorded in "
                          f"server/library_pins.py USED: {', '.join(unlisted)}")


def test_no_stale_rows():
    """Every OVERRIDDEN row is still overridden by one of our classes (the table says what is true)."""
    overridden = {key for cls in SUBCLASSES for key in shadowed(cls)}
    stale = sorted(set(library_pins.OVERRIDDEN) - overridden)
    assert not stale, f"server/library_pins.py lists overrides no class makes any more: {', '.join(stale)}"


# ---------------------------------------------------------------------- (c) the overrides live in server/adapter.py


@pytest.mark.parametrize("cls", OUTSIDE_ADAPTER, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_no_override_outside_the_adapter(cls: type):
    """Only server/adapter.py overrides library methods; our classes implement the adapter's own
    names (e.g. ``connect_namespace`` for ``_handle_connect``). ``__init__`` is the exception:
    a constructor with our parameters, which must hand on to its base's."""
    outside = [key for key in shadowed(cls) if not key.endswith(".__init__")]
    assert not outside, (f"{cls.__module__}.{cls.__qualname__} overrides library methods outside server/adapter.py: "
                         f"{', '.join(outside)}; override them in the adapter and implement an own-named method")
    if "__init__" in vars(cls):
        source = inspect.getsource(vars(cls)["__init__"])
        assert "super().__init__(" in source, f"{cls.__qualname__}.__init__ does not call its base's __init__"


def test_adapter_overrides_exist():
    assert ADAPTER_OVERRIDES, "found no override in server/adapter.py: the search above is out of date"


@pytest.mark.parametrize("cls, key", ADAPTER_OVERRIDES)
def test_adapter_override_names_library_version(cls: type, key: str):
    """Each override in server/adapter.py says, in the comment right above it, which library
    version it was written against: ``# python-engineio 4.15.1: AsyncServer.handle_request``."""
    name = key.rpartition(".")[2]
    module, steps = steps_of(key)
    distribution = {"engineio": "python-engineio", "socketio": "python-socketio"}[module.split(".")[0]]
    expected = f"# {distribution} {library_pins.PINNED[distribution]}: {steps[0][1]}.{name}"
    lines, first = inspect.getsourcelines(cls)
    pattern = re.compile(rf"^\s*(async\s+def|def)\s+{re.escape(name)}\b|^\s*{re.escape(name)}\s*=")
    at = next((i for i, line in enumerate(lines) if pattern.match(line)), None)
    assert at is not None, f"{key}: no definition of {name} found in {cls.__qualname__}'s source"
    comment = lines[at - 1].strip()
    assert comment.startswith(expected), (f"server/adapter.py line {first + at}: {cls.__qualname__}.{name} "
                                          f"must follow a comment starting {expected!r}, found {comment!r}")


def test_send_queue_has_every_queue_method_engineio_calls():
    """SendQueue stands in for asyncio.Queue in python-engineio's sessions (create_queue)."""
    import engineio

    folder = Path(engineio.__file__).parent
    called = set()
    for name in ("async_socket.py", "async_server.py", "base_socket.py", "base_server.py"):
        called.update(re.findall(r"\bqueue\.(\w+)\(", (folder / name).read_text()))
    assert called, "found no queue calls in python-engineio: the search above is out of date"
    missing = sorted(name for name in called if not hasattr(SendQueue, name))
    assert not missing, f"python-engineio calls queue methods SendQueue lacks: {', '.join(missing)}"


# ---------------------------------------------------------------------- (d) the versions


@pytest.mark.parametrize("distribution", sorted(library_pins.PINNED))
def test_installed_version_is_the_pinned_one(distribution: str):
    assert version(distribution) == library_pins.PINNED[distribution], \
        f"{distribution} {version(distribution)} is installed, server/library_pins.py was written against " \
        f"{library_pins.PINNED[distribution]}: run `make install`, or follow the upgrade steps there"


def test_pyproject_pins_the_same_versions():
    import tomllib

    from packaging.requirements import Requirement

    root = Path(__file__).resolve().parent.parent
    declared = {Requirement(r).name: str(Requirement(r).specifier)
                for r in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    for distribution, pinned in library_pins.PINNED.items():
        assert declared.get(distribution) == f"=={pinned}", \
            f"pyproject.toml has {distribution}{declared.get(distribution)}, server/library_pins.py {pinned}"
