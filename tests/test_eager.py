"""start_eagerly: a handler's first step runs at once, yet behaves as if in its own Task."""

from __future__ import annotations

import asyncio

import pytest

from server.eager import start_eagerly


async def _timed(seconds: float, results: list) -> None:
    try:
        async with asyncio.timeout(0.05):
            await asyncio.sleep(seconds)
        results.append("done")
    except TimeoutError:
        results.append("timeout")


async def test_a_timeout_entered_in_the_first_step_cancels_the_handler_not_the_caller():
    results: list = []

    async def reader() -> asyncio.Task:
        task = start_eagerly(_timed(5, results))
        await asyncio.sleep(0.2)  # the reader must survive the handler's timeout
        return task

    task = await asyncio.create_task(reader())
    assert results == ["timeout"] and task.done()


async def test_a_timeout_works_when_started_outside_any_task():
    results: list = []
    loop = asyncio.get_running_loop()
    started: asyncio.Future = loop.create_future()
    loop.call_soon(lambda: started.set_result(start_eagerly(_timed(0.01, results))))
    task = await started
    await task
    assert results == ["done"]


async def test_a_handler_that_never_waits_gets_no_task():
    results: list = []

    async def quick() -> None:
        results.append(asyncio.current_task() is not None)

    assert start_eagerly(quick()) is None
    assert results == [True]


async def test_handlers_started_in_one_turn_can_wait_for_one_future():
    """Two handlers whose first step waits for the same future (a paused socket's drain):
    the second must not find the future still marked as yielded by the first."""
    future: asyncio.Future = asyncio.get_running_loop().create_future()
    woken: list[int] = []

    async def waiter(i: int) -> None:
        await future
        woken.append(i)

    tasks = [start_eagerly(waiter(i)) for i in range(3)]
    assert all(t is not None for t in tasks)
    future.set_result(None)
    await asyncio.gather(*tasks)
    assert woken == [0, 1, 2]


async def test_a_bad_yield_fails_the_handler_not_its_caller():
    """A first step that yields something a Task refuses (not a future): the Task reports it,
    as asyncio would; start_eagerly itself does not raise into the reader that called it."""

    class Bad:
        def __await__(self):
            yield 42

    async def handler() -> None:
        await Bad()

    task = start_eagerly(handler())
    assert task is not None
    with pytest.raises(RuntimeError, match="bad yield"):
        await task
