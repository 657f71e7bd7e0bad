"""Start a coroutine at once, and give it a Task only if it has to wait.

Python 3.12's ``asyncio.eager_task_factory`` does this for every task; on 3.11 it is done by
hand here, for the one place it pays: a client's inbound packet. Most handlers (an echo, a
fan-out that only queues frames) finish without ever waiting, and a Task per packet was the
largest single cost on the echo path. Packets of one client still start in arrival order,
as they did when each got a Task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Coroutine, Generator

log = logging.getLogger("server.eager")

# A Task is only weakly referenced by the event loop; these are kept until they finish.
_running: set[asyncio.Task[Any]] = set()


def start_eagerly(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any] | None:
    """Run ``coro`` up to its first suspension now; continue it in a Task if it suspended.

    :param coro: a coroutine that handles its own errors; one that escapes is logged, as
                 asyncio would for a Task nobody awaits.
    :returns: the Task carrying the rest of ``coro``, or None when it already finished.
    """
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    except Exception:
        log.exception("handler failed")
        return None
    task = asyncio.ensure_future(_finish(coro, yielded))
    _running.add(task)
    task.add_done_callback(_done)
    return task


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("handler failed", exc_info=task.exception())


async def _finish(coro: Coroutine[Any, Any, Any], yielded: Any) -> Any:
    return await _Resume(coro, yielded)


class _Resume:
    """Hand the Task what the coroutine already yielded, then pass everything through."""

    __slots__ = ("coro", "yielded")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any) -> None:
        self.coro, self.yielded = coro, yielded

    def _steps(self) -> Generator[Any, Any, Any]:
        coro, yielded = self.coro, self.yielded
        while True:
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation or an error thrown in by the Task
                try:
                    yielded = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    yielded = coro.send(value)
                except StopIteration as stop:
                    return stop.value

    def __await__(self) -> Generator[Any, Any, Any]:
        return self._steps()
