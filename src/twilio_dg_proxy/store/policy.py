"""How the writer waits for the store (pure): the bounded queue of calls waiting to be
saved, and the backoff between attempts. No clock, no I/O: the writer supplies both."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


class PendingCalls(Generic[T]):
    """Calls waiting to be saved, oldest first, at most `limit` of them.

    The oldest is the one being saved (`begin`) until `done`. Beyond `limit`, the oldest
    call *not* being saved is dropped: after a long outage the calls kept are the latest,
    the ones people look for first, and the one in flight stays, since its save may
    already have succeeded (dropping it would count as lost a call that is stored)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._items: deque[T] = deque()
        self._busy = False  # the first item is being saved

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def add(self, item: T) -> T | None:
        """Queue `item`; return the item dropped to make room (maybe `item` itself), if any."""
        dropped: T | None = None
        if len(self._items) >= self.limit:
            if not self._busy:
                dropped = self._items.popleft()
            elif len(self._items) > 1:
                dropped = self._items[1]
                del self._items[1]
            else:  # the only one held is in flight: no room at all
                return item
        self._items.append(item)
        return dropped

    def begin(self) -> T:
        """The oldest call, now being saved. Raises IndexError if none is waiting."""
        item = self._items[0]
        self._busy = True
        return item

    def done(self) -> None:
        """The call `begin` returned is saved (or given up): forget it."""
        if self._busy:
            self._items.popleft()
            self._busy = False


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential backoff with jitter: the n-th wait (from 0) is `first_s * 2**n`, capped
    at `max_s`, times a factor from 0.5 to 1 given by `jitter` in [0, 1], so that instances that
    lost the same store do not retry in step."""

    first_s: float = 0.5
    max_s: float = 30.0

    def delay(self, attempt: int, jitter: float) -> float:
        exponent = min(max(attempt, 0), 64)  # 2**64 * first_s is past any cap
        return min(self.max_s, self.first_s * 2.0**exponent) * (
            0.5 + min(max(jitter, 0.0), 1.0) / 2
        )


#: The writer's default: 0.5 s doubling to 30 s.
DEFAULT_BACKOFF = Backoff()
