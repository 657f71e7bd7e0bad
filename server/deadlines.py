"""Many deadlines of one fixed delay on one event-loop timer (the sessions' heartbeat PINGs).

A ``loop.call_later`` per session costs a TimerHandle, the loop's timer (uvloop's UVTimer) and
a bound method, three objects the collector tracks for every idle connection, and a new set of
them at every heartbeat. With one delay for all, deadlines fall due in the order they were
armed: an insertion-ordered dict of key -> due time is the whole schedule (arm, cancel and
fire in O(1), no heap), and one timer, armed for the earliest, runs them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import OrderedDict
from typing import Any, Callable

log = logging.getLogger("server.deadlines")


class Deadlines:
    """``arm(key)`` calls ``fire(key)`` ``delay`` seconds later (as ``loop.call_later`` would,
    to the loop's timer resolution), unless ``cancel(key)`` or another ``arm(key)`` came first.

    :param loop: the event loop the timer runs on; None: the loop running at the first ``arm``
        (an owner built before its loop runs, as the Engine.IO server is).
    :param delay: seconds from arming to firing (> 0), the same for every key.
    :param fire: called with the key when its deadline comes; an exception it raises is logged.
    :param context: the context ``fire`` runs in (one for all keys: it must set no context
        variable it expects to find unset later).
    """

    __slots__ = ("loop", "delay", "fire", "context", "_due", "_timer")

    def __init__(self, loop: asyncio.AbstractEventLoop | None, delay: float, fire: Callable[[Any], None],
                 context: contextvars.Context) -> None:
        self.loop = loop
        self.delay = delay
        self.fire = fire
        self.context = context
        self._due: OrderedDict[Any, float] = OrderedDict()  # arming order is due order
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: Any) -> bool:
        return key in self._due

    def arm(self, key: Any) -> None:
        """Fire ``key`` ``delay`` seconds from now (re-arming moves an armed key's deadline)."""
        loop = self.loop
        if loop is None:
            loop = self.loop = asyncio.get_running_loop()
        due = loop.time() + self.delay
        schedule = self._due
        if key in schedule:
            del schedule[key]
        schedule[key] = due
        if self._timer is None:
            self._timer = loop.call_at(due, self._run, context=self.context)

    def cancel(self, key: Any) -> None:
        """``key`` does not fire (nothing happens when it is not armed). The timer stays; when
        it runs with nothing due it re-arms for the earliest left, or stops."""
        self._due.pop(key, None)

    def when(self, key: Any) -> float | None:
        """The loop time ``key`` fires at, or None when it is not armed."""
        return self._due.get(key)

    def _run(self) -> None:
        self._timer = None
        schedule = self._due
        now = self.loop.time()
        # At most the keys armed now: one that fire() re-arms waits for the next run.
        for _ in range(len(schedule)):
            if not schedule:
                break
            key = next(iter(schedule))
            due = schedule[key]
            if due > now:
                break
            del schedule[key]
            try:
                self.fire(key)
            except Exception:
                log.exception("deadline callback failed")
        if schedule and self._timer is None:
            self._timer = self.loop.call_at(max(now, schedule[next(iter(schedule))]), self._run,
                                            context=self.context)
