"""The registry of active calls and the subscribers watching each one.

No sockets: `publish()` only appends to each subscriber's bounded queue, so a call never
waits for a client. A subscriber that falls `queue_limit` messages behind is evicted: its
queue is dropped and it is told why, and the client layer closes its connection.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from websockets.frames import CloseCode

from .exceptions import DuplicateCall, TooManySubscribers, UnknownCall


@dataclass(frozen=True, slots=True)
class Ending:
    """How a subscription ends: the close code and reason its client receives, and whether
    the tutorial's `close` text goes first (only at the normal end of a call)."""

    code: CloseCode
    reason: str
    say_close: bool = False


CALL_ENDED = Ending(CloseCode.NORMAL_CLOSURE, "call ended", say_close=True)
CLIENT_LEFT = Ending(CloseCode.NORMAL_CLOSURE, "client left")


class Subscription:
    """One client's feed of one call: Deepgram messages in order, then one `Ending`."""

    def __init__(self, call_sid: str, limit: int) -> None:
        self.call_sid = call_sid
        self._limit = limit
        self._items: deque[str] = deque()
        self._ending: Ending | None = None
        self._wakeup = asyncio.Event()
        self.evicted = asyncio.Event()  # set when too slow: the client layer must close now

    def offer(self, text: str) -> bool:
        """Queue `text`; False if the queue was full and the subscriber is now evicted."""
        if self._ending is not None:
            return True
        if len(self._items) >= self._limit:
            self._items.clear()
            self.end(Ending(CloseCode.TRY_AGAIN_LATER, f"too slow: {self._limit} messages behind"))
            self.evicted.set()
            return False
        self._items.append(text)
        self._wakeup.set()
        return True

    def end(self, ending: Ending) -> None:
        """Deliver `ending` after what is queued; the first ending given wins."""
        if self._ending is None:
            self._ending = ending
            self._wakeup.set()

    @property
    def ending(self) -> Ending | None:
        """The ending given, if any (delivered after the queued messages)."""
        return self._ending

    @property
    def backlog(self) -> int:
        """Messages queued and not yet taken."""
        return len(self._items)

    async def get(self) -> str | Ending:
        """The next message, or the ending once every message has been taken."""
        while not self._items and self._ending is None:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._items.popleft() if self._items else self._ending  # type: ignore[return-value]


@dataclass(slots=True)
class _Call:
    subscribers: set[Subscription] = field(default_factory=set)


@dataclass(slots=True)
class HubCounters:
    """Totals since start, for health checks and logs."""

    calls: int = 0
    subscriptions: int = 0
    published: int = 0
    evicted: int = 0
    refused_unauthorized: int = 0
    refused_over_limit: int = 0
    deepgram_reconnects: int = 0
    late_packets: int = 0
    discontinuities: int = 0
    unknown_events: int = 0
    audio_dropped_bytes: int = 0


class Hub:
    """callSid → the call's subscribers. Publishing and ending never await anything."""

    def __init__(self, queue_limit: int, max_per_call: int = 1_000_000) -> None:
        self._queue_limit = queue_limit
        self._max_per_call = max_per_call
        self._calls: dict[str, _Call] = {}
        self.counters = HubCounters()

    def open_call(self, call_sid: str) -> None:
        """Register a call so that clients can subscribe to it."""
        if call_sid in self._calls:
            raise DuplicateCall(f"call {call_sid} is already streaming")
        self._calls[call_sid] = _Call()
        self.counters.calls += 1

    def end_call(self, call_sid: str, ending: Ending = CALL_ENDED) -> int:
        """Forget the call; each subscriber gets `ending` after its queue. Returns how many."""
        call = self._calls.pop(call_sid, None)
        if call is None:
            return 0
        for sub in call.subscribers:
            sub.end(ending)
        return len(call.subscribers)

    def subscribe(self, call_sid: str) -> Subscription:
        """Start a subscription to an active call."""
        call = self._calls.get(call_sid)
        if call is None:
            raise UnknownCall(f"unknown callSid {call_sid!r}: not an active call")
        if len(call.subscribers) >= self._max_per_call:
            self.counters.refused_over_limit += 1
            raise TooManySubscribers(f"call {call_sid} has {self._max_per_call} subscribers")
        sub = Subscription(call_sid, self._queue_limit)
        call.subscribers.add(sub)
        self.counters.subscriptions += 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to `sub` (its client left or was closed)."""
        sub.end(CLIENT_LEFT)
        call = self._calls.get(sub.call_sid)
        if call is not None:
            call.subscribers.discard(sub)

    def publish(self, call_sid: str, text: str) -> None:
        """Queue `text` for every subscriber of the call; evict those too far behind."""
        call = self._calls.get(call_sid)
        if call is None:
            return
        self.counters.published += 1
        evicted = [sub for sub in call.subscribers if not sub.offer(text)]
        for sub in evicted:
            call.subscribers.discard(sub)
            self.counters.evicted += 1

    def active_calls(self) -> list[str]:
        """callSids of the calls streaming now, oldest first."""
        return list(self._calls)

    def subscriber_count(self) -> int:
        """Subscribers across all active calls."""
        return sum(len(call.subscribers) for call in self._calls.values())
