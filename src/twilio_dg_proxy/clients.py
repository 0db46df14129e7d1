"""The client connections: /client, as in Deepgram's tutorial, and /viewer/ws, its JSON
extension for the web viewer (and any program that wants the same). The I/O only: the texts
are written and read by `client_protocol` and `viewer_protocol`.

/client:
1. The server sends a JSON array of the active callSids.
2. The client sends one callSid as a text line.
3. The server sends every Deepgram message of that call verbatim, then the text `close`
   and a normal close when the call ends.

/client additions, beside the tutorial's protocol and never in its place:
- `/client?history=1` (opt-in): after its choice the client first gets the call's final
  results so far (the history a viewer gets, each message as Deepgram sent it, oldest
  first), then the live messages, each final exactly once. Without it nothing is replayed.
  Other query parameters are ignored (`token` belongs to authentication; a client that passes
  any other gets the tutorial's protocol, as it always did). A `history` value other than
  1/0 (true/false, yes/no, on/off) is refused at once, as below, instead of the call list.
- A phone number instead of a callSid (`phone_numbers` says what is one and what matches):
  the newest active call with that number in one of its `NumberOptions.parameters` (From,
  To), or else the next call with it to start, waited for up to `NumberOptions.wait_s`,
  then `error: no call …` and a normal close (1000). One call per connection, as with a
  callSid; numbers appear in logs at DEBUG only (they are personal data).
- A refused client (a callSid that is not an active call, a binary choice, no choice in
  time, a call with too many watchers) gets one text, `error: <why>` (for an unknown callSid
  followed by `; active calls: [...]`), before the close (1008, or 1013 when full) whose
  reason says the same: websocat shows texts, not close reasons. A client that chooses an
  active call sees no difference.

/viewer/ws (JSON both ways; README, "The viewer protocol"):
1. The server sends `calls` (the active calls with their metadata), then `call_started` and
   `call_ended` as calls come and go.
2. The client sends `subscribe` or `unsubscribe` commands naming a callSid, and `follow`
   or `unfollow` naming a phone number (each call with it is subscribed to as it starts),
   at any time.
3. For each subscription the server sends `subscribed` (with the call's final results so
   far), then every Deepgram message of the call wrapped in `deepgram`, until `call_ended`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.protocol import State

from . import client_protocol, phone_numbers, viewer_protocol
from .direct_connection import receiving, text_or_fail
from .exceptions import (
    BrokerUnavailable,
    ClientProtocolError,
    NoCallInTime,
    ProxyError,
    TooManySubscribers,
    UnknownCall,
    close_frame_for,
)
from .http_responses import peer_address
from .hub import (
    CLIENT_LEFT,
    CallWaiter,
    Ending,
    Hub,
    Outbox,
    Subscription,
    ViewerFeed,
)
from .logs import get_logger
from .observations import is_bad_input
from .phone_numbers import PhoneNumber

logger = get_logger("clients")

# How long an evicted client gets to accept our close frame before its socket is cut.
_EVICTION_GRACE_S = 2.0
# A person typing a callSid into websocat needs time; a socket that never chooses does not
# get to hold a connection forever.
CHOICE_TIMEOUT_S = 300.0

# Called with a callSid before a client joins it (`RedisBroker.prepare`: load a call streamed
# by another instance); may raise ProxyError.
Prepare = Callable[[str], Awaitable[None]]


async def _nothing_to_prepare(call_sid: str) -> None:
    return None


# How long a /client client that named a phone number waits for a call with it (NUMBER_WAIT_S).
NUMBER_WAIT_S = 3600.0


@dataclass(frozen=True, slots=True)
class NumberOptions:
    """How watchers find calls by phone number: the custom parameters that hold a call's
    numbers (NUMBER_PARAMETERS) and how long a /client client waits for one (NUMBER_WAIT_S)."""

    parameters: tuple[str, ...] = phone_numbers.DEFAULT_PARAMETERS
    wait_s: float = NUMBER_WAIT_S

    def matcher(self, number: PhoneNumber) -> Callable[[viewer_protocol.CallInfo], bool]:
        """Whether a call has `number` in one of `parameters`."""
        return lambda info: phone_numbers.call_has(info, number, self.parameters)


async def handle_client(
    ws: ServerConnection,
    hub: Hub,
    *,
    choice_timeout_s: float = CHOICE_TIMEOUT_S,
    prepare: Prepare = _nothing_to_prepare,
    numbers: NumberOptions = NumberOptions(),  # noqa: B008 - frozen, so shared safely
) -> None:
    """Serve one /client connection: the call list, its choice (within `choice_timeout_s`),
    then that call's results (after its history if it asked for it). The choice is a
    callSid, or a phone number (`_subscribe_by_number`, with `numbers`).

    What the client sends goes to a `_Watcher` (`receiving`): on a direct connection from
    the socket callbacks, so that a watcher costs one task, its handler's. While it
    streams, this coroutine and `_stream`'s are all it awaits in."""
    watcher = _Watcher(ws, hub)
    async with receiving(ws, watcher):
        sub = await _subscription(ws, watcher, hub, choice_timeout_s, prepare, numbers)
        if sub is None:
            return
        peer = peer_address(ws)
        logger.info("client %s subscribed to %s", peer, sub.call_sid)
        try:
            await _stream(ws, watcher, sub, hub)
        finally:
            hub.unsubscribe(sub)
            logger.info("client %s left %s (%s)", peer, sub.call_sid, _close_code(ws))


async def _subscription(
    ws: ServerConnection,
    watcher: _Watcher,
    hub: Hub,
    choice_timeout_s: float,
    prepare: Prepare,
    numbers: NumberOptions,
) -> Subscription | None:
    """Send the call list, take the client's choice and subscribe it; None if it left, or
    was refused (then told why)."""
    try:
        options = client_protocol.parse_options(ws.request.path if ws.request else "")
        await ws.send(client_protocol.call_list(hub.active_calls()))
        try:
            async with asyncio.timeout(choice_timeout_s):
                choice = await watcher.choice()
        except TimeoutError:
            raise ClientProtocolError(
                f"no callSid chosen within {choice_timeout_s:.0f} s"
            ) from None
        if choice is None:
            return None  # it left (or sent invalid UTF-8: failed as recv() fails it)
        call_sid = client_protocol.parse_choice(choice)
        number = phone_numbers.parse(call_sid)  # never a callSid: those start with CA
        if number is None:
            await prepare(call_sid)
            return hub.subscribe(call_sid, history=options.history)
        # None if it left while waiting.
        return await _subscribe_by_number(ws, hub, number, options.history, numbers, prepare)
    except ConnectionClosed:
        return None
    except ProxyError as exc:
        await _refuse(ws, hub, exc)
        return None


class _Writer:
    """Writes a text to a client's socket at once, as `ws.send` would when its buffer is not
    full (`write_now`, a `DirectWrite`): an object with slots, not a closure and its cells
    (0.4 KB per watcher)."""

    __slots__ = ("_clock", "_observer", "_protocol", "_ws")

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        self._ws, self._protocol = ws, ws.protocol
        self._observer, self._clock = hub.observer, hub.clock

    def write_now(self, text: str, arrived: float) -> bool:
        """Write `text` (a Deepgram message that `arrived` then, or 0.0), and tell the
        observer when it arrived; False (queue it) when the socket is backed up, closing, or a
        send is under way."""
        ws = self._ws
        if ws.paused or ws.send_in_progress is not None or self._protocol.state is not State.OPEN:
            return False
        self._protocol.send_text(text.encode())
        try:
            ws.send_data()
        except Exception:  # noqa: BLE001 - as websockets' send: the connection is lost
            logger.debug("client %s: write failed", peer_address(ws), exc_info=True)
            ws.transport.abort()
            return True
        if arrived:
            self._observer.result_delivered(self._clock() - arrived)
        return True


class _Watcher(_Writer):
    """What a /client client sends (its `MessageSink`): its first message is its choice of
    a call; the tutorial's protocol has nothing after it, so the rest is ignored, but text
    that is not UTF-8 fails the connection as websockets' recv() would (1007, its reason).
    Its close ends the subscription it has then (`outbox`).

    Instead of a task reading `recv()` and websockets' queue for it; a future only while
    the choice is awaited. It writes to its client too (`_Writer`)."""

    __slots__ = ("_choice", "closer", "gone", "outbox")

    def __init__(self, ws: ServerConnection, hub: Hub) -> None:
        super().__init__(ws, hub)
        self._choice: asyncio.Future[str | bytes | None] | None = None
        self.outbox: Outbox | None = None  # told CLIENT_LEFT at the close
        self.gone = False  # the connection is closed
        self.closer: asyncio.Task[None] | None = None  # closing it once evicted (`_stream`)

    async def choice(self) -> str | bytes | None:
        """The first message, text as str; None if the connection closes first."""
        if self.gone:
            return None
        self._choice = asyncio.get_running_loop().create_future()
        try:
            return await self._choice
        finally:
            self._choice = None

    def message(self, data: bytes | str, text: bool) -> None:
        if text and isinstance(data, bytes):  # a direct connection's: check its UTF-8
            decoded = text_or_fail(self._ws, data)
            if decoded is None:
                return  # failed: its close follows
            data = decoded
        choice, self._choice = self._choice, None
        if choice is not None and not choice.done():
            choice.set_result(data)

    def closed(self) -> None:
        self.gone = True
        choice, self._choice = self._choice, None
        if choice is not None and not choice.done():
            choice.set_result(None)
        if self.outbox is not None:
            self.outbox.end(CLIENT_LEFT)

    def close_soon(self, closing: Coroutine[Any, Any, None]) -> None:
        """Run `closing` (the eviction's close) in a task of its own: `_stream` awaits it."""
        self.closer = asyncio.get_running_loop().create_task(closing)


async def _subscribe_by_number(
    ws: ServerConnection,
    hub: Hub,
    number: PhoneNumber,
    history: bool,
    numbers: NumberOptions,
    prepare: Prepare,
) -> Subscription | None:
    """Subscribe to the newest active call with `number`, or else to the next one to start
    (from its first message); None if the client left while waiting. Raises NoCallInTime
    after `numbers.wait_s`, and what `hub.subscribe` and `prepare` raise."""
    peer = peer_address(ws)
    newest = phone_numbers.newest_with(hub.call_infos(), number, numbers.parameters)
    if newest is not None:
        logger.debug("client %s chose %s: newest call %s", peer, number, newest.call_sid)
        await prepare(newest.call_sid)
        return hub.subscribe(newest.call_sid, history=history)
    # The number itself only at DEBUG: it is personal data, as the calls' parameters are.
    logger.info("client %s waits up to %.0f s for a call with a number", peer, numbers.wait_s)
    logger.debug("client %s waits for a call with %s", peer, number)
    waiter = hub.wait_for_call(numbers.matcher(number), history=history)
    served = False
    try:
        sub = await _until_served(ws, waiter, numbers.wait_s)
        if sub is not None:
            await prepare(sub.call_sid)  # a remote call: load it and follow its stream
            served = True
        return sub
    finally:
        hub.stop_waiting(waiter)
        if not served and isinstance(waiter.result, Subscription):
            hub.unsubscribe(waiter.result)  # it left, or `prepare` failed: leave that call


async def _until_served(
    ws: ServerConnection, waiter: CallWaiter, wait_s: float
) -> Subscription | None:
    """The waiter's subscription once the hub serves it; None if the client leaves first.
    Raises NoCallInTime after `wait_s`, TooManySubscribers if the call it found is full."""
    async with asyncio.TaskGroup() as tasks:
        left = tasks.create_task(ws.wait_closed())  # (what it sends goes to its `_Watcher`)
        found = tasks.create_task(waiter.found.wait())
        await asyncio.wait({left, found}, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED)
        gone = left.done()
        left.cancel()
        found.cancel()
    if gone:
        return None
    if isinstance(waiter.result, TooManySubscribers):
        raise waiter.result
    if waiter.result is None:
        raise NoCallInTime(f"no call from or to that number within {wait_s:g} s")
    return waiter.result


async def _refuse(ws: ServerConnection, hub: Hub, exc: ProxyError) -> None:
    """Say why in a text (`client_protocol.refusal`), then close with the code and reason
    of `exc`."""
    code, reason = close_frame_for(exc)
    logger.info("client %s refused (%d): %s", peer_address(ws), code, exc)
    if is_bad_input(exc):
        hub.observer.refused_bad_input()
    active = hub.active_calls() if isinstance(exc, UnknownCall) else None
    try:
        await ws.send(client_protocol.refusal(str(exc), active))
    except ConnectionClosed:
        return
    await ws.close(code, reason)


async def _stream(ws: ServerConnection, watcher: _Watcher, sub: Subscription, hub: Hub) -> None:
    """Forward the subscription until it ends, the client leaves, or it is evicted: in this
    task alone (the client's close ends the subscription from the socket callback)."""
    watcher.outbox = sub
    if watcher.gone:
        sub.end(CLIENT_LEFT)
    try:
        with _ClosedWhenEvicted(ws, sub, sub.call_sid, watcher.close_soon):
            await _forward(ws, sub, hub, watcher)
    except BaseException:
        if watcher.closer is not None:
            watcher.closer.cancel()
        raise
    finally:
        watcher.outbox = None
    if watcher.closer is not None:
        await watcher.closer  # as a task group would: the close is under way


async def _forward(ws: ServerConnection, outbox: Outbox, hub: Hub, writer: _Writer) -> None:
    """Send what `outbox` gives until its ending; tell the hub's observer when each Deepgram
    message is written (the fan-out latency: from its arrival in the hub). While nothing is
    queued, what the outbox is offered is written at once (`writer`)."""
    observer, clock = hub.observer, hub.clock
    write_now = writer.write_now
    try:
        while True:
            item = outbox.take()
            if item is None:
                try:
                    await outbox.wait(write_now)  # writes at once only while this task waits
                finally:
                    outbox.stop_waiting()
                continue
            if isinstance(item, Ending):
                await _end(ws, item)
                return
            await ws.send(item)
            if outbox.arrived:  # 0.0: a replay or a viewer event, not a live message
                observer.result_delivered(clock() - outbox.arrived)
    except ConnectionClosed:
        pass


async def _end(ws: ServerConnection, ending: Ending) -> None:
    if ending is CLIENT_LEFT:
        return
    if ending.say_close:
        await ws.send(client_protocol.CLOSE)
    await ws.close(ending.code, ending.reason)


class _ClosedWhenEvicted:
    """Within the block, close the client as soon as it falls too far behind, even if it
    has stopped reading: `_close_evicted` runs with `spawn`, only then (not a watchdog per
    client)."""

    __slots__ = ("_outbox", "_spawn", "_watching", "_ws")

    def __init__(
        self,
        ws: ServerConnection,
        outbox: Outbox,
        watching: str,
        spawn: Callable[[Coroutine[Any, Any, None]], object],
    ) -> None:
        self._ws, self._outbox, self._watching, self._spawn = ws, outbox, watching, spawn

    def __enter__(self) -> None:
        self._outbox.on_evicted = self._evicted
        if self._outbox.evicted:  # before the block began
            self._evicted()

    def __exit__(self, *exc: object) -> None:
        self._outbox.on_evicted = None

    def _evicted(self) -> None:
        self._outbox.on_evicted = None
        closing = _close_evicted(self._ws, self._outbox, self._watching)
        try:
            self._spawn(closing)
        except RuntimeError:  # its task group is shutting down: no gentle close to wait for
            closing.close()
            self._ws.transport.abort()


async def _close_evicted(ws: ServerConnection, outbox: Outbox, watching: str) -> None:
    ending = outbox.ending
    assert ending is not None  # eviction always sets one
    logger.warning("client %s of %s disconnected: %s", peer_address(ws), watching, ending.reason)
    try:
        async with asyncio.timeout(_EVICTION_GRACE_S):
            await ws.close(ending.code, ending.reason)
    except TimeoutError:
        # Its receive window is full, so not even the close frame gets through.
        ws.transport.abort()


async def handle_viewer(
    ws: ServerConnection,
    hub: Hub,
    *,
    prepare: Prepare = _nothing_to_prepare,
    numbers: NumberOptions = NumberOptions(),  # noqa: B008 - frozen, so shared safely
) -> None:
    """Serve one /viewer/ws connection: the call list, then the calls it subscribes to,
    and those with the numbers it follows (found with `numbers`)."""
    peer = peer_address(ws)
    viewer = hub.add_viewer(now_ms=int(time.time() * 1000))
    follows = NumberFollows(numbers.parameters)
    hub.add_listener(follows.call_opened)
    logger.info("viewer %s connected", peer)
    try:
        async with asyncio.TaskGroup() as tasks:
            reader = tasks.create_task(_read_commands(ws, hub, viewer, prepare, follows))
            joiner = tasks.create_task(_join_followed(ws, hub, viewer, prepare, follows))
            try:
                with _ClosedWhenEvicted(ws, viewer, "the call list", tasks.create_task):
                    await _forward(ws, viewer, hub, _Writer(ws, hub))
            finally:
                reader.cancel()
                joiner.cancel()
    finally:
        hub.remove_listener(follows.call_opened)
        hub.remove_viewer(viewer)
        logger.info("viewer %s left (%s)", peer, _close_code(ws))


# A viewer follows at most this many numbers at once: each is checked on every call's start.
MAX_FOLLOWED_NUMBERS = 20


class NumberFollows:
    """The phone numbers one viewer follows, and the calls with them that it should join
    (queued as they start, or when it starts following: the I/O layer joins them)."""

    def __init__(self, parameters: tuple[str, ...]) -> None:
        self.parameters = parameters
        self.numbers: dict[str, PhoneNumber] = {}  # by the number as the viewer is told it
        self.to_join: asyncio.Queue[viewer_protocol.CallInfo] = asyncio.Queue()

    def matches(self, info: viewer_protocol.CallInfo) -> bool:
        """Whether the call has one of the numbers followed."""
        return any(phone_numbers.call_has(info, n, self.parameters) for n in self.numbers.values())

    def unfollow(self, number: PhoneNumber) -> None:
        """Stop following `number`, however it was written (`phone_numbers.same_number`)."""
        for key, followed in list(self.numbers.items()):
            if phone_numbers.same_number(followed, number):
                del self.numbers[key]

    def call_opened(self, info: viewer_protocol.CallInfo, remote: bool) -> None:
        """The hub's listener: queue a call that starts with a number followed."""
        if self.numbers and self.matches(info):
            self.to_join.put_nowait(info)


async def _read_commands(
    ws: ServerConnection,
    hub: Hub,
    viewer: ViewerFeed,
    prepare: Prepare,
    follows: NumberFollows,
) -> None:
    """Apply the viewer's commands until it leaves; a malformed one closes it (1008)."""
    peer = peer_address(ws)
    try:
        async for message in ws:
            command = viewer_protocol.parse_command(message)
            if command.action in ("follow", "unfollow"):
                _follow_number(ws, hub, viewer, follows, command)
                continue
            if command.action == "unsubscribe":
                hub.unfollow(viewer, command.call_sid)
                continue
            if await _join(hub, viewer, prepare, command.call_sid):
                logger.info("viewer %s subscribed to %s", peer, command.call_sid)
    except ConnectionClosed:
        pass
    except ClientProtocolError as exc:
        code, reason = close_frame_for(exc)
        logger.info("viewer %s refused (%d): %s", peer, code, exc)
        hub.observer.refused_bad_input()
        viewer.end(Ending(code, reason))
        return
    viewer.end(CLIENT_LEFT)


async def _join(hub: Hub, viewer: ViewerFeed, prepare: Prepare, call_sid: str) -> bool:
    """Subscribe the viewer to the call (`hub.follow`); if that is refused, tell it why in an
    `error` and return False."""
    try:
        await prepare(call_sid)
        hub.follow(viewer, call_sid)
    except (UnknownCall, TooManySubscribers, BrokerUnavailable) as exc:
        code, reason = close_frame_for(exc)
        hub.tell(viewer, viewer_protocol.error(call_sid, code, reason))
        return False
    return True


def _follow_number(
    ws: ServerConnection,
    hub: Hub,
    viewer: ViewerFeed,
    follows: NumberFollows,
    command: viewer_protocol.ViewerCommand,
) -> None:
    """Apply `follow` (answer `followed`, then queue the active calls with the number, oldest
    first) or `unfollow` (of any followed number that matches; answer `unfollowed`). A
    follow of something that is not a phone number, or of one number too many, is answered
    with an `error` (1008)."""
    number = phone_numbers.parse(command.number)
    if command.action == "unfollow":
        if number is not None:
            follows.unfollow(number)
        hub.tell(viewer, viewer_protocol.unfollowed(str(number or command.number[:40])))
        return
    if number is None:
        problem = "not a phone number: digits, with an optional leading +"
    elif str(number) not in follows.numbers and len(follows.numbers) >= MAX_FOLLOWED_NUMBERS:
        problem = f"following {MAX_FOLLOWED_NUMBERS} numbers already"
    else:
        follows.numbers[str(number)] = number
        hub.tell(viewer, viewer_protocol.followed(str(number)))
        for info in hub.call_infos():
            follows.call_opened(info, hub.is_remote(info.call_sid))
        # The number itself only at DEBUG: it is personal data, as the calls' parameters are.
        logger.info(
            "viewer %s follows a number (%d in all)", peer_address(ws), len(follows.numbers)
        )
        logger.debug("viewer %s follows %s", peer_address(ws), number)
        return
    hub.tell(
        viewer, viewer_protocol.number_error(command.number, CloseCode.POLICY_VIOLATION, problem)
    )


async def _join_followed(
    ws: ServerConnection,
    hub: Hub,
    viewer: ViewerFeed,
    prepare: Prepare,
    follows: NumberFollows,
) -> None:
    """Subscribe the viewer to each call `follows` queues, unless it no longer has a number
    followed or is subscribed already (a call that ended meanwhile is skipped: the viewer
    was told `call_ended`)."""
    while True:
        info = await follows.to_join.get()
        if info.call_sid in viewer.following or not follows.matches(info):
            continue
        if info.call_sid not in hub.active_calls():
            continue
        if await _join(hub, viewer, prepare, info.call_sid):
            logger.info(
                "viewer %s subscribed to %s (a followed number)", peer_address(ws), info.call_sid
            )


def _close_code(ws: ServerConnection) -> int | None:
    """The code that ended the connection: ours if we closed first, else the client's."""
    sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
    first = sent if ws.protocol.close_rcvd_then_sent is not True else received
    return first.code if first is not None else None
