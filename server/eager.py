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
from asyncio import tasks as _tasks
from collections.abc import Coroutine, Generator
from typing import Any

log = logging.getLogger("server.eager")

# A Task is only weakly referenced by the event loop; these are kept until they finish.
_running: set[asyncio.Task[Any]] = set()
# The running task of each loop: asyncio's own table, which current_task() reads (3.11).
_current_tasks = _tasks._current_tasks


def start_eagerly(coro: Coroutine[Any, Any, Any],
                  loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Task[Any] | None:
    """Run ``coro`` up to its first suspension now; continue it in a Task if it suspended.

    :param coro: a coroutine that handles its own errors; one that escapes is logged, as
                 asyncio would for a Task nobody awaits.
    :param loop: the running event loop, when the caller has it at hand: Python 3.11's
                 ``asyncio.get_running_loop()`` costs a ``getpid()`` system call (its
                 fork check), one per inbound packet otherwise.
    :returns: the Task carrying the rest of ``coro``, or None when it already finished.
    """
    # While the first step runs, the current task is a stand-in for the Task that will carry
    # the rest (as Python 3.12's eager tasks do): asyncio.timeout() and redis-py's pool and
    # connect timeouts bind to the current task, and must cancel that Task, not the
    # connection's reader that happened to be running (or fail for want of any task).
    if loop is None:
        loop = asyncio.get_running_loop()
    outer = _current_tasks.get(loop)  # asyncio.current_task(loop), less its Python frame
    if outer is not None:
        _tasks._leave_task(loop, outer)
    standin = _TaskToBe()
    _tasks._enter_task(loop, standin)
    try:
        yielded = coro.send(None)
    except StopIteration:
        return None
    except Exception:
        log.exception("handler failed")
        return None
    finally:
        _tasks._leave_task(loop, standin)
        if outer is not None:
            _tasks._enter_task(loop, outer)
    # A Task clears a yielded future's blocking flag at once; until the Task below takes this
    # one over, the flag is cleared here: set, it makes another coroutine awaiting the same
    # future (a shared drain, say) fail with "await wasn't used with future".
    blocking = yielded is not None and getattr(yielded, "_asyncio_future_blocking", False) is True
    if blocking:
        yielded._asyncio_future_blocking = False
    task = asyncio.ensure_future(_Resumed(coro, yielded, blocking))
    standin.task = task
    _running.add(task)
    task.add_done_callback(_done)
    return task


class _TaskToBe:
    """The current task during a coroutine's eager first step: what is asked of a task there
    (``cancelling``; later ``cancel``/``uncancel`` from a timeout that expires) reaches the
    Task created when the coroutine suspends."""

    __slots__ = ("task",)

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None

    def cancelling(self) -> int:
        return self.task.cancelling() if self.task is not None else 0

    def uncancel(self) -> int:
        return self.task.uncancel() if self.task is not None else 0

    def cancel(self, msg: Any = None) -> bool:
        return self.task.cancel(msg) if self.task is not None else False

    def done(self) -> bool:
        return self.task.done() if self.task is not None else False

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop() if self.task is None else self.task.get_loop()


def _done(task: asyncio.Task[Any]) -> None:
    _running.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("handler failed", exc_info=task.exception())


class _Resumed(Coroutine[Any, Any, Any]):
    """``coro`` as a Task sees it: the first step hands over what ``coro`` already yielded,
    every later step (a result, or a cancellation even before that first step) goes
    straight to ``coro``, so its ``finally`` blocks run as in a Task of its own."""

    __slots__ = ("coro", "yielded", "blocking")

    def __init__(self, coro: Coroutine[Any, Any, Any], yielded: Any, blocking: bool) -> None:
        self.coro = coro
        self.yielded = yielded
        self.blocking = blocking  # the yielded future's flag, cleared meanwhile

    def send(self, value: Any) -> Any:
        if self.yielded is not _TAKEN:
            yielded, self.yielded = self.yielded, _TAKEN
            if self.blocking:
                yielded._asyncio_future_blocking = True  # as the Task expects it
            return yielded
        return self.coro.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        self.yielded = _TAKEN
        if val is None and tb is None:
            return self.coro.throw(typ)
        return self.coro.throw(typ, val, tb)

    def close(self) -> None:
        self.coro.close()

    def __await__(self) -> Generator[Any, Any, Any]:
        raise TypeError("started by start_eagerly, not awaitable")


_TAKEN = object()
