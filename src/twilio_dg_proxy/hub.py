"""The registry of active calls and the clients watching them.

No sockets: `publish()` only appends to each watcher's bounded queue, so a call never waits
for a client. A watcher that falls `queue_limit` messages behind is evicted: its queue is
dropped and it is told why, and the client layer closes its connection.

Two kinds of watcher share that policy. A `Subscription` is a /client (tutorial) client's
feed of one call: Deepgram's messages verbatim. A `ViewerFeed` is one /viewer/ws connection:
the call list as it changes, and for each call it follows, the call's final results so far
(its history), then its live messages, each wrapped in a small JSON envelope. The Hub decides
who gets what and when; `viewer_protocol` writes the viewers' texts.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from websockets.frames import CloseCode

from . import viewer_protocol
from .deepgram_protocol import OTHER, Kind, classify
from .exceptions import DuplicateCall, TooManySubscribers, UnknownCall
from .history import History as History
from .observations import NO_OBSERVER, Observer
from .viewer_protocol import CallInfo

# Only for a sink's bug (`_safely`): the hub itself has nothing to log.
logger = logging.getLogger("twilio_dg_proxy.hub")

DEFAULT_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_BYTES = 32 << 10


@dataclass(frozen=True, slots=True)
class Ending:
    """How a feed ends: the close code and reason its client receives, and whether the
    tutorial's `close` text goes first (only at the normal end of a call)."""

    code: CloseCode
    reason: str
    say_close: bool = False


CALL_ENDED = Ending(CloseCode.NORMAL_CLOSURE, "call ended", say_close=True)
CLIENT_LEFT = Ending(CloseCode.NORMAL_CLOSURE, "client left")


# Writes a text to a client's socket at once, if it can (given when it arrived, as `offer`):
# False when it cannot (the socket is backed up or closing), and the text is queued instead.
DirectWrite = Callable[[str, float], bool]


class Outbox:
    """One client's bounded queue of texts to send, then one `Ending`.

    `replay` (e.g. a call's history) goes first and does not count towards `limit`: the
    client asked for it, and only falling behind the live messages is too slow.

    While its sender waits (`wait(direct)`) with nothing queued (so nothing
    is being sent), `direct` is set: a text offered then is written at once, in the caller's
    step, instead of waking the sender's task for it; the queue is kept for a socket that is
    backed up.

    Small, as there is one per watcher: slots, a deque and a future only while something
    is queued and while its sender waits (an empty deque is 0.75 KB, an asyncio.Event holds
    one); eviction calls `on_evicted`."""

    __slots__ = (
        "_ending",
        "_items",
        "_limit",
        "_replay",
        "_waiter",
        "arrived",
        "direct",
        "evicted",
        "on_evicted",
    )

    def __init__(self, limit: int, replay: Iterable[str] = ()) -> None:
        self._limit = limit
        # Each text with when it arrived from Deepgram (the hub's clock), 0.0 for the others
        # (the replay, viewer events): the fan-out latency is measured when it is sent.
        # None while empty: direct writes leave it so (see the class).
        self._items: deque[tuple[str, float]] | None = None
        self._replay = 0  # how many of the first items are the replay
        self._queue_first([(text, 0.0) for text in replay])
        self.arrived = 0.0  # the arrival of the item `take()` returned last (0.0: none)
        self._ending: Ending | None = None
        self._waiter: asyncio.Future[None] | None = None  # while its sender waits
        self.evicted = False  # too slow: the client layer must close now
        self.on_evicted: Callable[[], None] | None = None  # the client layer's, told once
        self.direct: DirectWrite | None = None

    def replay_first(self, texts: Iterable[str]) -> None:
        """Put `texts` before everything queued, as a replay (not counted towards `limit`):
        what a call had sent before this client's feed could follow it."""
        if self._ending is not None and not self._items:
            return  # already ended (or evicted): nothing more for this client
        if self._queue_first([(text, 0.0) for text in texts]):
            self._wake()

    def offer(self, text: str, arrived: float = 0.0) -> bool:
        """Queue `text` (a Deepgram message that `arrived` then, or 0.0 for other texts);
        False if the queue was full and the client is now evicted."""
        if self._ending is not None:
            return True
        if self.direct is not None and not self._items and self._write_now(text, arrived):
            return True
        items = self._items
        if items is None:
            items = self._items = deque()
        if len(items) - self._replay >= self._limit:
            self._items = None
            self._replay = 0
            self.end(Ending(CloseCode.TRY_AGAIN_LATER, f"too slow: {self._limit} messages behind"))
            self.evicted = True
            if self.on_evicted is not None:
                try:
                    self.on_evicted()
                except Exception:  # a bug of one client's layer: never the publisher's
                    logger.exception("closing a client that fell behind failed")
            return False
        items.append((text, arrived))
        self._wake()
        return True

    def end(self, ending: Ending) -> None:
        """Deliver `ending` after what is queued; the first ending given wins."""
        if self._ending is None:
            self._ending = ending
            self._wake()

    @property
    def ending(self) -> Ending | None:
        """The ending given, if any (delivered after the queued messages)."""
        return self._ending

    @property
    def backlog(self) -> int:
        """Messages queued and not yet taken."""
        return len(self._items) if self._items is not None else 0

    def take(self) -> str | Ending | None:
        """The next message, or the ending once every message has been taken; None while
        neither has come (`wait` for them)."""
        items = self._items
        if not items:
            return self._ending
        if self._replay:
            self._replay -= 1
        text, self.arrived = items.popleft()
        if not items:
            self._items = None
        return text

    def wait(self, direct: DirectWrite | None = None) -> asyncio.Future[None]:
        """A future done once `take` has something to give; until then `direct` writes what
        is offered (see the class). For one task at a time, which calls `stop_waiting` as
        its wait ends, however it ends: a future, not a coroutine (no frame while waiting)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.direct = direct
        return waiter

    def stop_waiting(self) -> None:
        """The wait has ended: `direct` writes no more."""
        self._waiter = self.direct = None

    def _queue_first(self, items: list[tuple[str, float]]) -> bool:
        """Put `items` before everything queued, as a replay; whether there were any."""
        if not items:
            return False
        if self._items is None:
            self._items = deque(items)
        else:
            self._items.extendleft(reversed(items))
        self._replay += len(items)
        return True

    def _write_now(self, text: str, arrived: float) -> bool:
        """`direct`, which must not raise into the publisher (a Deepgram stream's socket
        callback: it would end the call for every watcher). If it does, this client is
        written to by its sender only, which meets the cause."""
        assert self.direct is not None
        try:
            return self.direct(text, arrived)
        except Exception:
            logger.exception("writing to a client at once failed")
            self.direct = None
            return False

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class Subscription(Outbox):
    """One /client client's feed of one call: the `history` it asked for (none by default),
    then Deepgram's messages in order, then one `Ending`."""

    __slots__ = ("call_sid", "catch_up")

    def __init__(self, call_sid: str, limit: int, history: Iterable[str] = ()) -> None:
        super().__init__(limit, history)
        self.call_sid = call_sid
        # Joined a mirrored call before its stream was loaded (a client waiting for the next
        # call with a number): the load gives it everything the call has sent so far.
        self.catch_up = False


# Told of each call as it opens, with whether it is remote; must not await (see `Hub`).
CallListener = Callable[[CallInfo, bool], None]


class CallWaiter:
    """A /client client waiting for the next call that `matches`: the hub subscribes it to
    the first one in the step that opens the call (so it misses none of its messages) and
    sets `found`; `result` is then the subscription, or TooManySubscribers (the call is
    full: MAX_SUBSCRIBERS_PER_CALL clients were waiting for it)."""

    def __init__(self, matches: Callable[[CallInfo], bool], *, history: bool = False) -> None:
        self.matches = matches
        self.history = history
        self.result: Subscription | TooManySubscribers | None = None
        self.found = asyncio.Event()


class ViewerFeed(Outbox):
    """One viewer connection's feed: call-list events and the calls it follows, in one queue
    (so one sender keeps them in order and one slow-client rule applies), then one `Ending`."""

    __slots__ = ("following",)

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.following: set[str] = set()


class CallSink(Protocol):
    """Where the hub also sends the calls streamed by this process: the Redis broker (so
    that other instances can watch them), the transcript recorder. Must not await.
    `message` gets each Deepgram message with what it is (`classify`d once by the hub, for
    all the sinks and the history)."""

    def call_opened(self, info: CallInfo) -> None: ...
    def message(self, call_sid: str, text: str, kind: Kind) -> None: ...
    def call_ended(self, call_sid: str, ending: Ending) -> None: ...


@dataclass(slots=True)
class _Call:
    info: CallInfo
    history: History
    remote: bool  # streamed by another instance: mirrored here for the watchers of this one
    subscribers: set[Subscription] = field(default_factory=set)
    # Made for the first viewer: most calls have none (an empty set is 0.2 KB).
    viewers: set[ViewerFeed] | None = None

    @property
    def watchers(self) -> int:
        return len(self.subscribers) + (len(self.viewers) if self.viewers else 0)

    def add_viewer(self, viewer: ViewerFeed) -> None:
        if self.viewers is None:
            self.viewers = set()
        self.viewers.add(viewer)

    def discard_viewer(self, viewer: ViewerFeed) -> None:
        if self.viewers:
            self.viewers.discard(viewer)


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
    gap_ms: int = 0  # milliseconds of lost Twilio audio filled with silence
    unknown_events: int = 0
    audio_dropped_bytes: int = 0
    control_floods: int = 0  # connections closed for too many pings or pongs (1008)
    write_buffer_overflows: int = 0  # connections dropped for not reading what we sent
    refused_pending: int = 0  # /twilio upgrades refused: MAX_PENDING_STREAMS not started yet
    redis_dropped: int = 0  # messages never published to Redis (its buffer was full)
    redis_errors: int = 0  # failed round trips to Redis (each retried)
    remote_calls_lost: int = 0  # calls ended here because their instance vanished
    webhooks_delivered: int = 0  # webhook events an endpoint accepted (2xx)
    webhooks_retried: int = 0  # failed webhook attempts tried again (network, 5xx, 429)
    webhooks_failed: int = 0  # webhook events given up: a 4xx, or every attempt failed
    webhooks_dropped: int = 0  # webhook events never sent: a full queue, or shutdown
    transcripts_stored: int = 0  # ended calls saved in the transcript store
    transcripts_lost: int = 0  # calls never stored whole (queue full, store refused, shutdown)
    transcript_finals_dropped: int = 0  # finals never stored: the store's queue was full
    store_errors: int = 0  # failed attempts to use the store (each save retried)


def _safely(method: Callable[..., None], *args: object) -> None:
    """Call a sink's method; a bug in one sink is logged, never the call's or its watchers'
    problem (the others still get the event)."""
    try:
        method(*args)
    except Exception:
        logger.exception("a call sink failed (%s)", getattr(method, "__qualname__", method))


def is_history(text: str) -> bool:
    """Whether a Deepgram message belongs in a call's history (`deepgram_protocol.Kind`)."""
    return classify(text).history


class Hub:
    """callSid → the call's watchers and history. Publishing and ending never await."""

    def __init__(
        self,
        queue_limit: int,
        max_per_call: int = 1_000_000,
        history_limit: int = DEFAULT_HISTORY_LIMIT,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        self._queue_limit = queue_limit
        self._max_per_call = max_per_call
        self._history_limit = history_limit
        self._history_bytes = history_bytes
        self._calls: dict[str, _Call] = {}
        self._viewers: set[ViewerFeed] = set()
        self.counters = HubCounters()
        # Metrics and readiness (`observations.Observer`); the clock that stamps Deepgram's
        # messages as they arrive, for the fan-out latency.
        self.observer: Observer = NO_OBSERVER
        self.clock: Callable[[], float] = time.monotonic
        # Where the calls streamed here also go (the Redis broker, the transcript recorder).
        self.sinks: list[CallSink] = []
        # Told of every call as it opens, local or remote: waiting clients, viewers that
        # follow a number.
        self._listeners: list[CallListener] = []
        self._waiters: list[CallWaiter] = []  # /client clients waiting for a call, oldest first

    # Calls.

    def open_call(
        self, call_sid: str, info: CallInfo | None = None, *, remote: bool = False
    ) -> None:
        """Register a call so that clients can subscribe to it; tell the viewers (and the
        sink, unless the call is `remote`: streamed by another instance)."""
        if call_sid in self._calls:
            raise DuplicateCall(f"call {call_sid} is already streaming")
        history = History(self._history_limit, self._history_bytes)
        call = _Call(info or CallInfo(call_sid), history, remote)
        self._calls[call_sid] = call
        if not remote:
            self.counters.calls += 1
            for sink in self.sinks:
                _safely(sink.call_opened, call.info)
        if self._viewers:
            self._tell_viewers(viewer_protocol.call_started(call.info))
        for waiter in [w for w in self._waiters if w.matches(call.info)]:
            self._serve(waiter, call_sid, remote)
        for listener in list(self._listeners):  # a listener may remove itself
            listener(call.info, remote)

    def add_listener(self, listener: CallListener) -> None:
        """Call `listener(info, remote)` in each `open_call` from now on, after the viewers
        are told `call_started` and before any message of the call is published."""
        self._listeners.append(listener)

    def remove_listener(self, listener: CallListener) -> None:
        """Stop calling `listener` (no error if it was not added, or already removed)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def end_call(self, call_sid: str, ending: Ending = CALL_ENDED) -> int:
        """Forget the call: each subscriber gets `ending` after its queue, each viewer a
        `call_ended` event. Returns how many subscribers and viewers followed the call."""
        call = self._calls.pop(call_sid, None)
        if call is None:
            return 0
        for sub in call.subscribers:
            sub.end(ending)
        for viewer in call.viewers or ():
            viewer.following.discard(call_sid)
        if self._viewers:
            self._tell_viewers(viewer_protocol.call_ended(call_sid, ending.code, ending.reason))
        if not call.remote:  # after the watchers: a sink's bug must not leave them hanging
            for sink in self.sinks:
                _safely(sink.call_ended, call_sid, ending)
        return call.watchers

    def publish(self, call_sid: str, text: str) -> None:
        """Queue `text` for every watcher of the call, keep it in the call's history if it
        is a final result, and evict the watchers too far behind."""
        call = self._calls.get(call_sid)
        if call is None:
            return
        self.counters.published += 1
        arrived = self.clock()
        to_sinks = bool(self.sinks) and not call.remote
        keeps_history = bool(self._history_limit and self._history_bytes)
        kind = classify(text) if to_sinks or keeps_history else OTHER
        if to_sinks:
            for sink in self.sinks:  # per Deepgram message: inline, not through `_safely`
                try:
                    sink.message(call_sid, text, kind)
                except Exception:
                    logger.exception("a call sink failed (%s)", type(sink).__qualname__)
        if keeps_history and kind.history:
            call.history.add(text)
        if call.subscribers:
            evicted = [sub for sub in call.subscribers if not sub.offer(text, arrived)]
            for sub in evicted:
                call.subscribers.discard(sub)
                self.counters.evicted += 1
        if call.viewers:
            envelope = viewer_protocol.deepgram(call_sid, text)
            for viewer in list(call.viewers):
                self._offer(viewer, envelope, arrived)

    def active_calls(self) -> list[str]:
        """callSids of the calls streaming now, oldest first."""
        return list(self._calls)

    def call_infos(self) -> list[CallInfo]:
        """The active calls' descriptions, in the order the hub learnt of them."""
        return [call.info for call in self._calls.values()]

    def local_calls(self) -> list[str]:
        """callSids of the calls this process streams (not mirrored from elsewhere)."""
        return [sid for sid, call in self._calls.items() if not call.remote]

    def is_remote(self, call_sid: str) -> bool:
        """Whether the call is active and streamed by another instance."""
        call = self._calls.get(call_sid)
        return call is not None and call.remote

    def watcher_count(self, call_sid: str) -> int:
        """Subscribers and viewers following the call here (0 if it is not active)."""
        call = self._calls.get(call_sid)
        return call.watchers if call is not None else 0

    def replace_history(self, call_sid: str, messages: Iterable[str], truncated: bool) -> None:
        """Set a call's history from `messages` (a replay of everything it sent, filtered
        and bounded as `publish` would have): a mirrored call's, read from Redis. The call's
        subscribers with `catch_up` get all of `messages` before anything queued for them."""
        call = self._calls.get(call_sid)
        if call is None:
            return
        messages = list(messages)  # read twice: the history, the subscribers catching up
        history = History(self._history_limit, self._history_bytes)
        if self._history_limit and self._history_bytes:
            for text in messages:
                if is_history(text):
                    history.add(text)
        history.truncated = history.truncated or truncated
        call.history = history
        for sub in call.subscribers:
            if sub.catch_up:
                sub.catch_up = False
                sub.replay_first(messages)

    def subscriber_count(self) -> int:
        """Subscribers and viewers following calls, across all active calls."""
        return sum(call.watchers for call in self._calls.values())

    def viewer_count(self) -> int:
        """Viewer connections, whether or not they follow a call."""
        return len(self._viewers)

    # /client subscribers.

    def subscribe(self, call_sid: str, *, history: bool = False) -> Subscription:
        """Start a subscription to an active call. With `history`, its queue starts with the
        call's history (as `follow` sends a viewer; older finals beyond the history's limits
        are gone), taken in the same step as it joins the call, so every final reaches it
        exactly once. Raises UnknownCall or TooManySubscribers."""
        call = self._watchable(call_sid)
        sub = Subscription(call_sid, self._queue_limit, call.history.messages if history else ())
        call.subscribers.add(sub)
        self.counters.subscriptions += 1
        return sub

    def wait_for_call(
        self, matches: Callable[[CallInfo], bool], *, history: bool = False
    ) -> CallWaiter:
        """A waiter subscribed (`subscribe`, with `history`) to the next call to open that
        `matches`, in the step that opens it; a remote call's subscription catches up with
        what the call sent before its stream is loaded here. Call `stop_waiting` when done."""
        waiter = CallWaiter(matches, history=history)
        self._waiters.append(waiter)
        return waiter

    def stop_waiting(self, waiter: CallWaiter) -> None:
        """Forget `waiter` (served or not); no error if it is already forgotten."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def unsubscribe(self, sub: Subscription) -> None:
        """Stop delivering to `sub` (its client left or was closed)."""
        sub.end(CLIENT_LEFT)
        call = self._calls.get(sub.call_sid)
        if call is not None:
            call.subscribers.discard(sub)

    # Viewers.

    def add_viewer(self, now_ms: int) -> ViewerFeed:
        """A new viewer's feed. It starts with the `calls` list (`now_ms`, the server's Unix
        time in milliseconds, lets the viewer show durations whatever its own clock says),
        then receives `call_started` and `call_ended` as calls come and go."""
        viewer = ViewerFeed(self._queue_limit)
        viewer.offer(viewer_protocol.calls(now_ms, (call.info for call in self._calls.values())))
        self._viewers.add(viewer)
        return viewer

    def remove_viewer(self, viewer: ViewerFeed) -> None:
        """Stop delivering anything to `viewer` (its client left or was closed)."""
        viewer.end(CLIENT_LEFT)
        self._detach(viewer)

    def follow(self, viewer: ViewerFeed, call_sid: str) -> None:
        """Send `viewer` the call's history, then its live messages until it ends.

        The history goes into the viewer's queue and the viewer joins the call's watchers in
        one step (nothing is awaited), so every final reaches it exactly once. Following a
        call again sends the history again (a resync). Raises UnknownCall or
        TooManySubscribers."""
        following = call_sid in viewer.following
        call = self._calls[call_sid] if following else self._watchable(call_sid)
        history = call.history
        snapshot = viewer_protocol.subscribed(
            call_sid, call.info, history.messages, history.truncated
        )
        if not self._offer(viewer, snapshot):
            return
        if not following:
            viewer.following.add(call_sid)
            call.add_viewer(viewer)
            self.counters.subscriptions += 1

    def unfollow(self, viewer: ViewerFeed, call_sid: str) -> None:
        """Stop sending the call's messages to `viewer`; it is told `unsubscribed` after
        those already queued."""
        viewer.following.discard(call_sid)
        call = self._calls.get(call_sid)
        if call is not None:
            call.discard_viewer(viewer)
        self._offer(viewer, viewer_protocol.unsubscribed(call_sid))

    def tell(self, viewer: ViewerFeed, text: str) -> None:
        """Queue one message of the viewer protocol (e.g. an error) for `viewer`."""
        self._offer(viewer, text)

    # Internals.

    def _serve(self, waiter: CallWaiter, call_sid: str, remote: bool) -> None:
        """Subscribe `waiter` to the call just opened and wake it; it waits no more."""
        self._waiters.remove(waiter)
        try:
            sub = self.subscribe(call_sid, history=waiter.history)
        except TooManySubscribers as exc:
            waiter.result = exc
        else:
            sub.catch_up = remote
            waiter.result = sub
        waiter.found.set()

    def _watchable(self, call_sid: str) -> _Call:
        call = self._calls.get(call_sid)
        if call is None:
            raise UnknownCall(f"unknown callSid {call_sid!r}: not an active call")
        if call.watchers >= self._max_per_call:
            self.counters.refused_over_limit += 1
            raise TooManySubscribers(f"call {call_sid} has {self._max_per_call} subscribers")
        return call

    def _tell_viewers(self, text: str) -> None:
        for viewer in list(self._viewers):
            self._offer(viewer, text)

    def _offer(self, viewer: ViewerFeed, text: str, arrived: float = 0.0) -> bool:
        """Queue `text` for `viewer`; detach and count it if that evicted it."""
        if viewer.offer(text, arrived):
            return True
        self._detach(viewer)
        self.counters.evicted += 1
        return False

    def _detach(self, viewer: ViewerFeed) -> None:
        self._viewers.discard(viewer)
        for call_sid in viewer.following:
            call = self._calls.get(call_sid)
            if call is not None:
                call.discard_viewer(viewer)
        viewer.following.clear()
