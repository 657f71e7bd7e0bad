"""The benchmark profile's server in this process, for the tools that count its work from inside
(bench/conn_memory.py, connect_cost.py, fanout_cost.py, polling_cost.py, echo_cost.py): the bench
configuration (``bench/bench.toml``, the /bench namespace, embedded: no Redis), the limits that
would throttle a load generator raised as bench/run.sh raises them, and the collector tuned as
``python -m server`` tunes it. With ``REDIS_URL`` set (a local redis-server of your own, e.g.
``redis-server --port 6390 --save ''``), the server runs in the Redis mode, as configuration
from the environment always does: every tool then counts that mode's work.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


async def start_bench_server() -> tuple[Any, Any, int]:
    """Start the server on a free loopback port: ``(runner, app, port)``; ``await
    runner.cleanup()`` stops it. ``LOG_LEVEL`` may be set by the caller (default warning)."""
    os.environ.update(BENCH_NAMESPACE="1", EVENTS_PER_SECOND="1000000", MAX_CONNECTIONS_PER_IP="1000000")
    os.environ.setdefault("LOG_LEVEL", "warning")
    sys.path[:0] = [str(ROOT), str(ROOT / "channels")]  # this checkout's packages, not the editable install's
    from aiohttp import web

    from namespaces import factories
    from server.__main__ import listen_sockets, tune_gc
    from server.app import configure_logging, create_app
    from server.config import load_config

    config = load_config(str(ROOT / "bench" / "bench.toml"))
    configure_logging(config)
    app = create_app(config, factories(bench=True))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = listen_sockets("127.0.0.1", 0)[0]  # as python -m server listens
    await web.SockSite(runner, sock).start()
    tune_gc()
    dump_tasks_on_signal()
    return runner, app, sock.getsockname()[1]


def dump_tasks_on_signal() -> None:
    """``kill -USR1 <pid>`` prints every asyncio task's stack to stderr: what a tool that
    stopped making progress is waiting for (seen once in a while at its end, its client gone)."""
    import asyncio
    import signal

    def dump() -> None:
        for task in asyncio.all_tasks():
            print("-- task", task.get_name(), file=sys.stderr)
            task.print_stack(limit=8, file=sys.stderr)

    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, dump)
