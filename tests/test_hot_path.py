"""The hot path's building blocks keep the semantics of what they replace: SendQueue behaves
like asyncio.Queue where python-engineio relies on it, start_eagerly runs handlers in
arrival order and still reports failures, and through the real server a burst of packets
from the official JS client is answered completely and in order on both transports."""

from __future__ import annotations

import asyncio
import logging

import pytest

from server.eager import start_eagerly
from server.send_queue import SendQueue

# ------------------------------------------------------------------ SendQueue


async def test_send_queue_is_fifo_and_counts_until_task_done():
    queue = SendQueue()
    assert queue.empty() and queue.qsize() == 0 and queue._unfinished_tasks == 0
    for item in ("a", "b", "c"):
        queue.put_nowait(item)
    assert queue.items() == ("a", "b", "c") and queue.qsize() == 3
    assert [await queue.get(), queue.get_nowait()] == ["a", "b"]
    assert queue._unfinished_tasks == 3  # taken is not finished
    queue.task_done()
    queue.task_done()
    assert queue._unfinished_tasks == 1
    assert queue.get_nowait() == "c" and queue.empty() and queue._queue is None
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()
    queue.task_done()
    with pytest.raises(ValueError):
        queue.task_done()


async def test_send_queue_get_waits_for_a_put_and_join_for_task_done():
    queue = SendQueue()
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert not getter.done()
    queue.put_nowait(1)
    assert await asyncio.wait_for(getter, 1) == 1
    joiner = asyncio.ensure_future(queue.join())
    await asyncio.sleep(0)
    assert not joiner.done()
    queue.task_done()
    await asyncio.wait_for(joiner, 1)
    await asyncio.wait_for(queue.join(), 1)  # nothing unfinished: returns at once


async def test_send_queue_passes_a_wake_up_on_when_its_getter_is_cancelled():
    queue = SendQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes the first getter ...
    first.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "x"
    assert first.cancelled()


async def test_send_queue_get_times_out_like_asyncio_queue():
    # python-engineio's long-poll waits with wait_for(queue.get(), timeout).
    queue = SendQueue()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(queue.get(), 0.05)
    queue.put_nowait("late")
    assert await asyncio.wait_for(queue.get(), 1) == "late"


# ------------------------------------------------------------------ start_eagerly


async def test_a_handler_that_never_waits_finishes_without_a_task():
    seen = []

    async def handler(i):
        seen.append(i)

    assert start_eagerly(handler(1)) is None
    assert seen == [1]


async def test_handlers_that_wait_start_in_order_and_finish_in_a_task():
    seen = []

    async def handler(i):
        seen.append(("start", i))
        await asyncio.sleep(0.01 * (3 - i))
        seen.append(("end", i))
        return i

    tasks = [start_eagerly(handler(i)) for i in range(3)]
    assert seen == [("start", 0), ("start", 1), ("start", 2)]
    assert await asyncio.gather(*tasks) == [0, 1, 2]
    assert [s for s in seen if s[0] == "end"] == [("end", 2), ("end", 1), ("end", 0)]


async def test_failures_are_logged_whether_or_not_the_handler_waited(caplog):
    async def fails_at_once():
        raise RuntimeError("at once")

    async def fails_later():
        await asyncio.sleep(0)
        raise RuntimeError("later")

    with caplog.at_level(logging.ERROR, logger="server.eager"):
        assert start_eagerly(fails_at_once()) is None
        task = start_eagerly(fails_later())
        with pytest.raises(RuntimeError):
            await task
        await asyncio.sleep(0)
    messages = [r.exc_info[1].args[0] for r in caplog.records if r.exc_info]
    assert messages == ["at once", "later"]


async def test_a_waiting_handler_can_be_cancelled():
    cleaned = asyncio.Event()

    async def handler():
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.set()

    task = start_eagerly(handler())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned.is_set()


# ------------------------------------------------------------------ through the real server


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_a_burst_of_acks_and_broadcasts_arrives_complete_and_in_order(servers, js, transports):
    srv = servers(env={"BENCH_NAMESPACE": "1", "EVENTS_PER_SECOND": "100000", "EVENT_BURST": "100000"})
    assert (await js.connect("c", srv.url + "/bench", transports=transports))["connected"]
    assert await js.emit("c", "join", "r") is True
    payloads = [{"n": i, "pad": "x" * (i % 7)} for i in range(200)]
    try:
        acks = await asyncio.gather(*(js.emit("c", "echo", p) for p in payloads))
    except Exception:
        print(srv.output())
        raise
    assert acks == payloads
    # Durable fan-outs sent back to back reach the sender in the order sent, offsets rising.
    await asyncio.gather(*(js.send("c", "fanout", {"room": "r", "payload": i}) for i in range(100)))
    events = await js.wait("c", "msg", 100)
    assert [e["args"][0] for e in events] == list(range(100))
    offsets = [(e["args"][1].split("~")[1], int(e["args"][1].split("~")[0])) for e in events]
    assert offsets == sorted(offsets) and len(set(offsets)) == 100
