"""Many waits of one length, timed by one timer: each pending /twilio stream's wait for its
`start` (issue 11: an unauthenticated connection may hold a few KB at most).

Under uvloop a timer of its own cost each pending stream 0.6 KB, and an `asyncio.timeout`
0.7 KB; a place in `Deadlines` costs ~0.1 KB. As every wait has the same length, they fall
due in the order they began: the one timer only ever waits for the oldest.
"""

from __future__ import annotations

import asyncio


class Deadlines:
    """Futures woken (their result set to None) `delay_s` after each was `add`ed, unless
    done or `discard`ed first."""

    __slots__ = ("_due", "_timer", "delay_s")

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self._due: dict[asyncio.Future[None], float] = {}  # in order of deadline
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._due)

    def add(self, waiter: asyncio.Future[None]) -> None:
        """Wake `waiter` in `delay_s`, unless it is done or discarded before."""
        loop = waiter.get_loop()
        when = self._due[waiter] = loop.time() + self.delay_s
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire, loop)

    def discard(self, waiter: asyncio.Future[None]) -> None:
        """Forget `waiter` (the timer goes on to the next one when it fires)."""
        self._due.pop(waiter, None)

    def _expire(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        due = self._due
        now = loop.time()
        while due:
            waiter, when = next(iter(due.items()))
            if when > now:
                self._timer = loop.call_at(when, self._expire, loop)
                return
            del due[waiter]
            if not waiter.done():
                waiter.set_result(None)
