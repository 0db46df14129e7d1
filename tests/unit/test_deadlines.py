"""Deadlines: many waits of one length, one timer for all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.deadlines import Deadlines

from ..timing import S

DELAY = 10.0


@dataclass
class FakeTimer:
    when: float
    callback: Callable[..., None]
    args: tuple[Any, ...]
    cancelled: bool = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class FakeLoop:
    """The two things Deadlines asks of a loop, on a clock the test moves."""

    now: float = 0.0
    timers: list[FakeTimer] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[..., None], *args: Any) -> FakeTimer:
        timer = FakeTimer(when, callback, args)
        self.timers.append(timer)
        return timer

    def pending(self) -> list[FakeTimer]:
        return [t for t in self.timers if not t.cancelled]

    def advance(self, seconds: float) -> None:
        """Move the clock on, running each timer that falls due, in order."""
        end = self.now + seconds
        while due := sorted((t for t in self.pending() if t.when <= end), key=lambda t: t.when):
            timer = due[0]
            timer.cancelled = True  # ran
            self.now = max(self.now, timer.when)
            timer.callback(*timer.args)
        self.now = end


@dataclass(eq=False)
class FakeWaiter:
    loop: FakeLoop
    woken_at: float | None = None
    finished: bool = False  # done otherwise (a result set by someone else, or cancelled)

    def get_loop(self) -> FakeLoop:
        return self.loop

    def done(self) -> bool:
        return self.finished or self.woken_at is not None

    def set_result(self, result: None) -> None:
        assert not self.done()
        self.woken_at = self.loop.now


def future(waiter: FakeWaiter) -> asyncio.Future[None]:
    return cast("asyncio.Future[None]", waiter)


# Each step: ("add", gap before it), ("discard", index), ("finish", index), ("wait", gap).
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.floats(0, 2 * DELAY)),
        st.tuples(st.just("discard"), st.integers(0, 30)),
        st.tuples(st.just("finish"), st.integers(0, 30)),
        st.tuples(st.just("wait"), st.floats(0, 2 * DELAY)),
    ),
    max_size=40,
)


@given(steps)
def test_each_waiter_is_woken_at_its_deadline_unless_discarded_or_done_first(
    plan: list[tuple[str, float]],
) -> None:
    loop = FakeLoop()
    deadlines = Deadlines(DELAY)
    added: list[tuple[FakeWaiter, float]] = []  # each waiter and its deadline
    left: set[int] = set()  # those neither discarded nor done
    for kind, value in plan:
        if kind in ("add", "wait"):
            loop.advance(value)
        if kind == "add":
            waiter = FakeWaiter(loop)
            deadlines.add(future(waiter))
            added.append((waiter, loop.now + DELAY))
            left.add(len(added) - 1)
        elif added and kind in ("discard", "finish"):
            index = int(value) % len(added)
            if index in left and added[index][0].woken_at is None:
                left.discard(index)
                if kind == "discard":
                    deadlines.discard(future(added[index][0]))
                else:
                    added[index][0].finished = True
        assert len(loop.pending()) <= 1  # one timer, whatever the number of waiters
    loop.advance(2 * DELAY)
    for index, (waiter, deadline) in enumerate(added):
        if index in left:
            assert waiter.woken_at == deadline
        else:
            assert waiter.woken_at is None
    assert not loop.pending() and len(deadlines) == 0


def test_the_timer_waits_only_for_the_oldest_and_stops_when_none_is_left() -> None:
    loop = FakeLoop()
    deadlines = Deadlines(DELAY)
    first, second = FakeWaiter(loop), FakeWaiter(loop)
    deadlines.add(future(first))
    loop.advance(3)
    deadlines.add(future(second))
    assert [t.when for t in loop.pending()] == [DELAY]
    loop.advance(DELAY - 3)
    assert first.woken_at == DELAY and second.woken_at is None
    assert [t.when for t in loop.pending()] == [DELAY + 3]
    deadlines.discard(future(second))
    loop.advance(3)  # fires, finds no one, and is not set again
    assert second.woken_at is None and not loop.pending()


async def test_on_a_real_loop_a_waiter_is_woken_and_a_discarded_one_is_not() -> None:
    deadlines = Deadlines(0.01 * S)
    loop = asyncio.get_running_loop()
    woken, discarded, cancelled = (loop.create_future() for _ in range(3))
    for waiter in (discarded, cancelled, woken):
        deadlines.add(waiter)
    deadlines.discard(discarded)
    cancelled.cancel()  # as when its task is cancelled: left as it is
    await asyncio.wait_for(woken, 5 * S)
    assert woken.result() is None and not discarded.done() and cancelled.cancelled()
