"""``python -m server``: start one node.

    python -m server [--config PATH] [--host HOST] [--port PORT]
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import logging
import os
import socket
import sys

from aiohttp import web

from .config import ConfigError, load_config


def environment_help() -> str:
    """The environment variables that override ``config.toml``, one line each (for ``--help``)."""
    from .config import ENV_OVERRIDES

    width = max(map(len, ENV_OVERRIDES))
    lines = [f"  {name.ljust(width)}  {section}.{key}" for name, (section, key) in sorted(ENV_OVERRIDES.items())]
    return "environment variables (each overrides the config.toml key beside it):\n" + "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m server", description="Run one realtime server node.",
                                     epilog=environment_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TOML configuration file (default: config.toml in the repository)")
    parser.add_argument("--host", help="listen address (overrides server.host and $HOST)")
    parser.add_argument("--port", type=int, help="listen port (overrides server.port and $PORT)")
    parser.add_argument("--conformance", action="store_true",
                        help="serve only what the official protocol test suites expect, on localhost:3000")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.conformance:
        return run_conformance(args.host or "localhost", args.port or 3000)
    try:
        config = load_config(args.config)
        overrides = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if overrides:
            config = config.with_overrides(server=overrides)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 2

    # Bind first: on a busy port the server stops here, with one line, before it starts any
    # part of itself or logs that it is listening or ready.
    try:
        sockets = listen_sockets(config.server.host, config.server.port)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        print(f"cannot listen on {config.server.host}:{config.server.port}: {reason.lower()}", file=sys.stderr)
        return 1

    from .app import configure_logging, create_app

    configure_logging(config)
    try:
        import uvloop
    except ImportError:  # optional: plain asyncio works, only slower
        uvloop = None
    if uvloop is not None:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    log = logging.getLogger("server")
    from namespaces import factories  # the one place the server and the applications meet

    app = create_app(config, factories(bench=config.server.bench_namespace))
    tune_gc()
    log.info("listening on http://%s:%d", config.server.host, config.server.port)
    web.run_app(app, sock=sockets, print=None, shutdown_timeout=config.server.shutdown_timeout, access_log=None)
    return 0


def listen_sockets(host: str, port: int, backlog: int = 128) -> list[socket.socket]:
    """Listening sockets on every address ``host`` resolves to, as aiohttp's own site would
    open them (address reuse, IPv6 sockets IPv6-only), ready to hand to ``web.run_app``.

    TCP keep-alive is set here, once: Linux copies it to every accepted connection. aiohttp's
    RequestHandler sets it per connection through ``transport.get_extra_info("socket")``, for
    which uvloop builds and keeps a socket object per connection (one more object the
    collector tracks for each open WebSocket); HttpFront takes every connection first and
    does not.

    :param host: the listen address (``server.host``); empty means every interface.
    :param port: the listen port.
    :param backlog: connections the kernel queues before the server accepts them (aiohttp's default).
    :raises OSError: the address cannot be resolved or bound (a busy port); nothing stays open.
    """
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    opened: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            opened.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno != errno.EADDRNOTAVAIL:
                    raise
                # That address family is not enabled here (IPv6, say): skip it, as asyncio does.
                opened.pop().close()
                continue
            sock.listen(backlog)
            sock.setblocking(False)
        if not opened:
            raise OSError(errno.EADDRNOTAVAIL, os.strerror(errno.EADDRNOTAVAIL))
    except OSError:
        for sock in opened:
            sock.close()
        raise
    return opened


def tune_gc() -> None:
    """Collect young objects every 10,000 allocations instead of 700, and leave what start-up
    built out of every collection. Each connection holds a few hundred long-lived objects, so
    with CPython's defaults a connection storm spends much of its time re-scanning sockets
    that are still alive (bench conns stage to 10k: 1.34k -> 1.67k connects/s; with the
    collector off entirely 2.05k). Cyclic garbage is still collected, only in larger batches.
    ``bench/connect_cost.py --conns 10000 --gc-storms 2 [--garbage]`` shows the collector's work
    in a storm (about 9 % of its CPU) and what closed connections leave for it; larger young
    thresholds gave no less, and freezing live connections would keep their cycles for ever.

    With connections already open (the harness's second stage, 5,000 -> 10,000: ``connect_cost.py
    --stages 5000,10000 --node-client``) no full collection runs: the freeze resets the counts,
    a full one needs 10 middle ones and the stage makes 2. The young and middle collections see
    each new connection's objects once each, whatever the number open, so what they cost per
    connect depends on the objects a connection keeps (25 tracked), not on how many are open.
    Freezing after every young collection takes the middle ones away (collector ms per stage
    ~100 -> ~24, ``--freeze-young``), but then a cycle formed by anything that outlived one
    young collection waits for an explicit full collection: not done here."""
    gc.set_threshold(10_000, 10, 10)
    gc.freeze()


def run_conformance(host: str, port: int) -> int:
    from .conformance import create_conformance_app

    logging.basicConfig(level=logging.WARNING)
    print(f"conformance profile on http://{host}:{port} (test-only settings)", file=sys.stderr)
    web.run_app(create_conformance_app(), host=host, port=port, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
