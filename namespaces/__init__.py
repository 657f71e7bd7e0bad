"""Application namespaces: one module per namespace, each with ``create(runtime)``.

The entry point (``server/__main__.py``) hands :func:`factories` to ``create_app``; the
server package itself never imports this one.
"""

from __future__ import annotations

from typing import Any, Callable


def factories(bench: bool = False) -> list[Callable[[Any], Any]]:
    """The ``create(runtime)`` of every namespace this product serves.

    :param bench: add ``/bench``, the namespace ``bench/run.sh`` measures (``server.bench_namespace``).
    """
    from . import admin, chat, collab, game

    made = [chat.create, game.create, collab.create, admin.create]
    if bench:
        from . import bench as bench_module

        made.append(bench_module.create)
    return made
