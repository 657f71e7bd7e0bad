"""server/deadlines.py: the heartbeat PINGs' one timer fires each armed key once, its delay
after the last arm, never a cancelled one, and stops when nothing is armed."""

from __future__ import annotations

import asyncio
import contextvars

from server.deadlines import Deadlines


async def test_keys_fire_in_order_after_their_delay_unless_cancelled_or_re_armed():
    loop = asyncio.get_running_loop()
    fired: list[tuple[str, float]] = []
    started = loop.time()
    schedule = Deadlines(loop, 0.2, lambda key: fired.append((key, loop.time() - started)), contextvars.Context())
    schedule.arm("a")
    schedule.arm("b")
    schedule.arm("c")
    await asyncio.sleep(0.1)
    schedule.cancel("b")
    schedule.arm("a")  # moved: 0.2 s from now
    schedule.arm("d")
    assert len(schedule) == 3 and "b" not in schedule and schedule.when("a") > started + 0.25
    await asyncio.sleep(0.15)
    assert [k for k, _ in fired] == ["c"] and 0.19 < fired[0][1] < 0.3
    await asyncio.sleep(0.2)
    assert [k for k, _ in fired] == ["c", "a", "d"] and fired[1][1] >= 0.29
    assert len(schedule) == 0 and schedule._timer is None  # nothing armed: no timer either
    schedule.arm("e")
    await asyncio.sleep(0.3)
    assert [k for k, _ in fired][-1] == "e"


async def test_a_failing_callback_is_logged_and_the_others_still_fire(caplog):
    loop = asyncio.get_running_loop()
    fired: list[str] = []

    def fire(key: str) -> None:
        if key == "bad":
            raise RuntimeError("boom")
        fired.append(key)
        if key == "again":  # re-armed from its own callback: fires once more, a delay later
            fired.append("re-armed")
            schedule.arm("later")

    schedule = Deadlines(loop, 0.05, fire, contextvars.Context())
    for key in ("bad", "ok", "again"):
        schedule.arm(key)
    await asyncio.sleep(0.2)
    assert fired == ["ok", "again", "re-armed", "later"]
    assert "deadline callback failed" in caplog.text


async def test_a_session_that_leaves_a_ping_unanswered_is_closed_after_ping_timeout():
    """The PONG deadline ends a session whose client went quiet (here a long-polling one, which
    has no read watchdog), with python-engineio's service task off (server/app.py): ping after
    ping_interval, closed ping_timeout later."""
    import socket as socket_module
    from pathlib import Path

    import aiohttp
    from aiohttp import web

    from namespaces import factories
    from server.app import create_app
    from server.config import load_config

    root = Path(__file__).resolve().parent.parent
    config = load_config(str(root / "bench" / "bench.toml"),
                         environ={"BENCH_NAMESPACE": "1", "PING_INTERVAL": "0.3", "PING_TIMEOUT": "0.2"})
    app = create_app(config, factories(bench=True))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket_module.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    port = sock.getsockname()[1]
    try:
        eio = app["runtime"].sio.eio
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling") as resp:
                assert resp.status == 200 and (await resp.text()).startswith("0")
            [session_socket] = eio.sockets.values()
            loop = asyncio.get_running_loop()
            opened = loop.time()
            while not session_socket.closed and loop.time() - opened < 3:
                await asyncio.sleep(0.02)
            assert session_socket.closed and loop.time() - opened < 0.3 + 0.2 + 0.4
            assert eio.service_task_handle is None  # nothing walks the sessions
            assert len(eio.pong_deadlines) == 0 and len(eio.ping_deadlines) == 0
    finally:
        await runner.cleanup()
