"""How the writer waits for the store (pure): the bounded queue of events waiting to be
written, and the backoff between attempts. No clock, no I/O: the writer supplies both."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from ..backoff import Backoff

E = TypeVar("E")  # an event
K = TypeVar("K")  # the call it belongs to, compared by identity

Kind = Literal["start", "final", "end"]


@dataclass(slots=True, eq=False)
class Waiting(Generic[E, K]):
    """One event of a call waiting for the store, and the bytes it holds."""

    event: E
    call: K
    kind: Kind
    size: int
    dropped: bool = False


class PendingEvents(Generic[E, K]):
    """Events waiting to be written, oldest first, holding at most `max_bytes` in all.

    Beyond the bound, the oldest waiting *finals* go first: the calls stay, with a gap (the
    writer marks them truncated). If only starts and ends are left, the oldest call whose
    start still waits goes whole (its start, finals and end). An end whose start was
    written is never dropped: there are at most as many as calls were live when the store
    went away. Events taken (`take`) are the writer's: never dropped."""

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self.max_bytes = max_bytes
        self.bytes = 0  # held by the waiting events
        self._events: deque[Waiting[E, K]] = deque()  # dropped ones are skipped
        self._finals: deque[Waiting[E, K]] = deque()  # the waiting finals, oldest first
        self._count = 0
        self._tombstones = 0  # dropped events still in `_events`
        self.dropped_bytes_held = 0  # what those still hold: compacted beyond a quarter bound

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Waiting[E, K]]:
        return (waiting for waiting in self._events if not waiting.dropped)

    def add(self, waiting: Waiting[E, K]) -> list[Waiting[E, K]]:
        """Queue `waiting`; return what was dropped to keep within the bound (maybe
        `waiting` itself), oldest first."""
        self._events.append(waiting)
        if waiting.kind == "final":
            self._finals.append(waiting)
        self.bytes += waiting.size
        self._count += 1
        dropped: list[Waiting[E, K]] = []
        while self.bytes > self.max_bytes:
            gone = self._drop_oldest_final() or self._drop_oldest_unstarted_call()
            if not gone:
                break  # only ends of calls already started: kept
            dropped += gone
        # A long outage: drop the husks, before they hold more than a quarter of the bound
        # (the queue holds at most 1.25 times it) or outnumber the live events.
        if self.dropped_bytes_held > self.max_bytes // 4 or self._tombstones > max(
            1024, self._count
        ):
            self._compact()
        return dropped

    def take(self, max_events: int, max_bytes: int) -> list[Waiting[E, K]]:
        """The oldest waiting events, at least one if any, up to `max_events` or until
        `max_bytes` is reached; no longer waiting (nor counted, nor dropped)."""
        taken: list[Waiting[E, K]] = []
        size = 0
        while self._events and len(taken) < max_events and size < max_bytes:
            waiting = self._events.popleft()
            if waiting.dropped:
                self._tombstones -= 1
                self.dropped_bytes_held -= waiting.size
                continue
            if waiting.kind == "final":
                while self._finals[0] is not waiting:  # dropped ones before it
                    self._finals.popleft()
                self._finals.popleft()
            self._forget(waiting)
            size += waiting.size
            taken.append(waiting)
        return taken

    def clear(self) -> list[Waiting[E, K]]:
        """Everything still waiting, no longer."""
        left = list(self)
        for waiting in left:
            self._forget(waiting)
        self._events.clear()
        self._finals.clear()
        self._tombstones = 0
        self.dropped_bytes_held = 0
        return left

    def _compact(self) -> None:
        self._events = deque(self)
        self._finals = deque(w for w in self._finals if not w.dropped)
        self._tombstones = 0
        self.dropped_bytes_held = 0

    def _forget(self, waiting: Waiting[E, K]) -> None:
        self.bytes -= waiting.size
        self._count -= 1

    def _drop(self, waiting: Waiting[E, K]) -> None:
        waiting.dropped = True
        self._tombstones += 1
        self.dropped_bytes_held += waiting.size
        self._forget(waiting)

    def _drop_oldest_final(self) -> list[Waiting[E, K]]:
        while self._finals:
            waiting = self._finals.popleft()
            if not waiting.dropped:
                self._drop(waiting)
                return [waiting]
        return []

    def _drop_oldest_unstarted_call(self) -> list[Waiting[E, K]]:
        start = next((w for w in self if w.kind == "start"), None)
        if start is None:
            return []
        gone = [w for w in self if w.call is start.call]
        for waiting in gone:
            self._drop(waiting)
        return gone


#: The writer's default: 0.5 s doubling to 30 s, equal jitter.
DEFAULT_BACKOFF = Backoff(0.5, 30.0)
