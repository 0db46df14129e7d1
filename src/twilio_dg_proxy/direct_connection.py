"""WebSocket connections that hand each message to a callback the moment it is parsed.

websockets queues every message for a task to `recv()`: for Twilio's 100 small messages per
second per call, queueing one and waking the call's task to take it cost more CPU than
handling it (`bench --profile`), and so did parsing each frame through websockets'
generators; for Deepgram's results, the task hop also adds a loop turn to every transcript's
way to its watchers. A direct connection reads the common frame (one frame per message)
itself (`FrameSplitter`) and calls `MessageSink.message` from the protocol callback that
received it, in order; any other frame goes to websockets, whose checks, limits, pings and
closing handshake stay as they are. `DirectConnection` serves /twilio and /client this way
(/viewer/ws keeps `recv()`); `DirectClientConnection` is the client side, for Deepgram.
`receiving` gives a sink its messages either way: directly, or through websockets' public
`recv()` when DIRECT_RECEIVE is off: the fallback, should a websockets release break the
internals this module leans on. Either way a server connection parses no frame before its
handshake response is sent (`GuardedConnection`, which also bounds what one peer may
cost the others), so each path's limits apply from
the first byte.

This module subclasses websockets' connection classes and relies on their internals:
tests/unit/test_websockets_contract.py names each one and fails, saying which and how, when
a websockets release changes it.
"""

from __future__ import annotations

import asyncio
import random
import struct
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn, Protocol, Self, cast
from urllib.parse import urlsplit

from websockets.asyncio.client import ClientConnection
from websockets.asyncio.connection import Connection
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import DATA_OPCODES, CloseCode, Frame, Opcode
from websockets.http11 import Request, Response
from websockets.protocol import Event, State

from .budget import TokenBucket
from .frame_splitter import ControlGate, FrameSplitter, Message

if TYPE_CHECKING:
    from collections import deque

    from websockets.asyncio.messages import Assembler

_NO_LIMIT = 1 << 62

try:  # recent websockets' recv() refuses a message in more fragments than this
    from websockets.asyncio.messages import MAX_FRAGMENTS as MAX_FRAGMENTS
except ImportError:  # pragma: no cover - older websockets: the same default
    MAX_FRAGMENTS = 4096


class MessageSink(Protocol):
    """Where a connection's messages go (`receiving`). Called from the event loop's protocol
    callbacks, so neither method may block or raise."""

    def message(self, data: bytes | str, text: bool) -> None:
        """One complete message: a text message (its UTF-8 bytes, or a str from `recv()`),
        or a binary message."""

    def closed(self) -> None:
        """The connection is closed: no message will follow."""


class _HeadFirst(Connection):
    """Hands websockets the handshake's HTTP head on its own, and what follows it to
    `_frames_received`: on a client at once, on a server only once its response is sent.

    A server learns the path, and so its limits, from the request, and process_request sets
    them; frames that came with the request (or after it, before the response) would else be
    parsed before that, against the server-wide limit, and in the CONNECTING state, where
    websockets cannot answer them with a close frame. Held until the response instead (with
    reading paused, so at most one read is held), they are parsed as any later frame."""

    holds_early_frames: ClassVar[bool] = False  # a server's, until its response is sent

    # Slots, not the instance dict, for what this module adds (here and in subclasses):
    # websockets' own attributes (27) fit CPython's key-sharing instance dict (up to 29
    # keys); with ours too, each connection had a full dict of its own, 1.3 KB more.
    __slots__ = ("_early", "_head_tail", "_ping_timer")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._ping_timer: asyncio.TimerHandle | None = None  # the next ping, or its timeout
        # websockets' writers waiting for the write buffer to drain: it appends, removes and
        # iterates, which a list does as well as its deque, for 56 bytes instead of 760.
        self.drain_waiters = cast("deque[asyncio.Future[None]]", [])
        # Until the end of the HTTP head ("\r\n\r\n") is found: the last bytes of the reads
        # so far, to find it even across reads.
        self._head_tail: bytes | None = b""
        self._early: bytearray | None = None  # a server's bytes after the head, until the 101

    def data_received(self, data: bytes) -> None:
        if self._head_tail is None:
            if self._early is not None:  # a TLS transport may hand over what it had decrypted
                self._early += data
            else:
                self._frames_received(data)
            return
        joined = self._head_tail + data
        end = joined.find(b"\r\n\r\n")
        if end < 0:
            self._head_tail = joined[-3:]
            super().data_received(data)
            return
        cut = end + 4 - len(self._head_tail)  # where the head ends in `data`
        self._head_tail = None
        super().data_received(data[:cut])  # the request or response (and its events)
        rest = data[cut:]
        if self.protocol.handshake_exc is not None:  # refused: websockets discards the rest
            if rest:
                super().data_received(rest)
            return
        self._head_read()
        if self.holds_early_frames and self.protocol.state is State.CONNECTING:
            self._early = bytearray(rest)
            self.transport.pause_reading()
        elif rest:
            self._frames_received(rest)

    def _head_read(self) -> None:
        """The handshake's head has been read (and accepted, on a client)."""

    # Keepalive: websockets' own, a ping every ping_interval and the connection failed
    # (1011, "keepalive ping timeout") when its pong takes over ping_timeout, but driven by
    # one timer instead of a task sleeping in a loop: a task, its coroutine and its sleep
    # are 2 KB per connection, 8 KB per call (Twilio, Deepgram, 2 watchers); a timer 0.6.

    def start_keepalive(self) -> None:
        if self.ping_interval is not None and self._ping_timer is None:
            self._ping_timer = self.loop.call_later(self.ping_interval, self._ping)

    def _ping(self) -> None:
        """Send a keepalive ping, as websockets' `ping()`: a payload not awaited yet, and
        its future in `pending_pings`, which the pong (`acknowledge_pings`) or the
        connection's end (`terminate_pending_pings`) completes."""
        self._ping_timer = None
        if self.protocol.state is not State.OPEN:
            return  # closing: no ping, as websockets' ping() raises then
        data = None
        while data is None or data in self.pending_pings:
            data = struct.pack("!I", random.getrandbits(32))
        pong: asyncio.Future[float] = self.loop.create_future()
        self.pending_pings[data] = (pong, self.loop.time())
        self.protocol.send_ping(data)
        self.send_data()
        if self.ping_timeout is None:
            self.start_keepalive()  # no pong awaited: the next ping one interval on
            return
        pong.add_done_callback(self._ponged)
        self._ping_timer = self.loop.call_later(self.ping_timeout, self._pong_late, pong)

    def _ponged(self, pong: asyncio.Future[float]) -> None:
        """The pong came (its result, the latency): the next ping ping_interval after the
        ping, as websockets' loop does. Else the connection has ended: no more pings."""
        if pong.cancelled() or pong.exception() is not None or self._ping_timer is None:
            return
        self._ping_timer.cancel()
        interval = self.ping_interval or 0.0
        self._ping_timer = self.loop.call_later(max(interval - pong.result(), 0.0), self._ping)

    def _pong_late(self, pong: asyncio.Future[float]) -> None:
        self._ping_timer = None
        if pong.done():
            return
        pong.remove_done_callback(self._ponged)
        fail_connection(self, CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
        self.loop.call_later(self.close_timeout or 0.0, self._abort_unless_lost)

    def _abort_unless_lost(self) -> None:
        """As websockets' send_context after failing: the peer had close_timeout to close."""
        if not self.connection_lost_waiter.done():
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._ping_timer is not None:  # else it would hold the connection until then
            self._ping_timer.cancel()
            self._ping_timer = None

    def _frames_received(self, data: bytes) -> None:
        """Bytes of the WebSocket stream, in order, from the first after the head."""
        super().data_received(data)

    def _release_early(self) -> None:
        """The server's response is sent: read on, and parse the frames held since the
        request. A refused connection reads on too (websockets discards what it reads then):
        else the peer's end would go unseen and the connection linger until close_timeout."""
        early, self._early = self._early, None
        if early is None:
            return
        self.transport.resume_reading()
        if early and self.protocol.state is State.OPEN:
            self._frames_received(bytes(early))


@dataclass(frozen=True, slots=True)
class Guard:
    """What one server connection may cost the others: `control_per_s` ping and pong frames
    per second on average and `control_burst` at once (beyond: failed with 1008), and
    `write_buffer_bytes` waiting to be sent (beyond: aborted). `breached(ws, limit)` is told
    of each connection ended so, `limit` being "control_frames" or "write_buffer"; `lost(ws)`
    of every connection's end, handshake or not."""

    control_per_s: float
    control_burst: int
    write_buffer_bytes: int
    breached: Callable[[ServerConnection, str], None]
    lost: Callable[[ServerConnection], None]


class GuardedConnection(_HeadFirst, ServerConnection):
    """A `ServerConnection` that parses no frame before its handshake response is sent, so
    that the limits process_request sets for the path apply from the first byte, and that
    keeps to its class's `guard`.

    Without a guard, a peer could make websockets answer pings without end (tens of
    thousands per second, each parsed and answered in the event loop), or ping without
    reading, so that its pongs pile up in our write buffer: automatic answers are written
    without flow control."""

    holds_early_frames = True
    guard: ClassVar[Guard | None] = None
    __slots__ = ("_breached", "_control", "_gate", "_keepalive_due", "_keepalive_held")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        guard = self.guard
        self._control = TokenBucket(guard.control_per_s, guard.control_burst) if guard else None
        self._gate: ControlGate | None = ControlGate()
        self._breached = False
        self._keepalive_due: asyncio.TimerHandle | None = None
        self._keepalive_held = False

    @classmethod
    def configured(cls, **attributes: Any) -> type[Self]:
        """A subclass with these class attributes (`guard`, ...): one server's settings."""
        return cast("type[Self]", type(cls.__name__, (cls,), attributes))

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        try:
            await super().handshake(*args, **kwargs)
        finally:  # a refused handshake raises, and must read on all the same
            self._release_early()

    def _frames_received(self, data: bytes) -> None:
        """Count the read's ping and pong frames before websockets parses any of it (it
        answers every ping of a read before we would see one): websockets gets only the
        frames before the first one over the budget, and the connection is then failed, so
        a flood costs at most the budget's pongs, whatever one read holds."""
        gate, control = self._gate, self._control
        if gate is None:  # over the budget once: the rest of the stream is not parsed
            return
        if control is None or self.protocol.state is State.CONNECTING:
            super()._frames_received(data)  # (refused upgrade: websockets discards it)
            return
        allowed = gate.passable(data, control, self.loop.time())
        if allowed:
            super()._frames_received(data if allowed == len(data) else data[:allowed])
        if allowed < len(data):
            self._gate = None
            self._fail_flooded()

    def _fail_flooded(self) -> None:
        """Fail the connection for its control frames, counted as a breach: with a close
        frame if it is open, and in any case ending our side of TCP, so that websockets
        parses nothing more (a peer may flood a connection whose closing handshake has
        begun: websockets answers its pings then too). Unless websockets has already ended
        our side (the peer's close, an error) within the frames the budget let through."""
        protocol = self.protocol
        if protocol.eof_sent:
            return
        self._breach("control_frames")
        protocol.fail(CloseCode.POLICY_VIOLATION, "too many control frames")
        self.send_data()

    def send_data(self) -> None:
        """Write what the protocol has to send, as websockets does, but abort the connection
        rather than write to a buffer already holding more than the guard allows: so it
        never exceeds that by more than one frame. When our side ends before the handshake
        completed (a refused upgrade, an HTTP response), read on: websockets then waits for
        the peer's end, which a paused transport would never see."""
        guard = self.guard
        transport = self.transport
        for data in self.protocol.data_to_send():
            if self._breached and transport.is_closing():
                return
            if not data:  # the end of our side of the stream
                self._release_early()
                if transport.can_write_eof():
                    try:  # as websockets: write_eof() documents no exceptions
                        transport.write_eof()
                    except Exception:  # noqa: BLE001 - the connection is ending anyway
                        pass
                else:  # TLS cannot half-close
                    transport.close()
            elif guard is not None and transport.get_write_buffer_size() > guard.write_buffer_bytes:
                self._breach("write_buffer")
                transport.abort()
                return
            else:
                transport.write(data)

    def _breach(self, limit: str) -> None:
        self._breached = True
        if self.guard is not None:
            self.guard.breached(self, limit)

    def start_keepalive(self) -> None:
        """Start keepalive (`_HeadFirst`'s) one ping_interval after the handshake, with a
        timer.

        websockets' task slept ping_interval before anything else, and that task, its
        coroutine and its sleep were a tenth of what a connection held (1.7 of 17 KB per pending
        /twilio stream, which ends within 10 s, before any ping); a timer costs 0.2 KB (0.6
        under uvloop: a pending /twilio stream's is held until its `start`).
        The first ping comes after twice ping_interval (40 s by default), the next ones
        every ping_interval as before. Not while held (`hold_keepalive`), nor twice."""
        if self.ping_interval is None or self._keepalive_held:
            return
        if self._keepalive_due is None and self._ping_timer is None:
            self._keepalive_due = self.loop.call_later(self.ping_interval, self._keepalive)

    def hold_keepalive(self) -> None:
        """Start keepalive at `release_keepalive`, not at the handshake (for a pending
        /twilio stream, which the start timeout closes first if it does not start)."""
        self._keepalive_held = True

    def release_keepalive(self) -> None:
        """Start keepalive now, if it was held and the connection is open."""
        if self._keepalive_held:
            self._keepalive_held = False
            if self.protocol.state is State.OPEN:
                self.start_keepalive()

    def _keepalive(self) -> None:
        self._keepalive_due = None
        super().start_keepalive()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self._keepalive_due is not None:  # else it would hold the connection until then
            self._keepalive_due.cancel()
            self._keepalive_due = None
        if self.guard is not None:
            self.guard.lost(self)


# The attributes of `_Direct`, as slots of each concrete class: slots in `_Direct` itself
# and in `GuardedConnection` could not be combined in `DirectConnection` (two layouts).
_DIRECT_SLOTS = ("_failed", "_held", "_lost", "_parts", "_sink", "_splitter", "_text", "direct")


class _Direct(_HeadFirst):
    """What both sides share: the messages of a direct connection go to the sink given to
    `attach`, held until then. Subclasses set `direct` at the handshake and route data
    frames that websockets parsed to `_take`, and declare `_DIRECT_SLOTS`."""

    masked = True  # whether the peer's frames are masked (a client's are)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.direct = False
        self._sink: MessageSink | None = None
        self._held: list[tuple[bytes, bool]] | None = None  # messages parsed before `attach`
        self._parts: list[bytes] | None = None  # fragments of the message being received
        self._text = False  # the message being received is text
        self._lost = False
        self._failed = False  # failed the connection itself: take nothing more
        self._splitter: FrameSplitter | None = None  # set for direct connections

    def attach(self, sink: MessageSink) -> None:
        """Deliver to `sink` the messages held so far, then each one as it comes."""
        assert self.direct and self._sink is None
        self._sink = sink
        held, self._held = self._held, None
        for data, text in held or ():
            sink.message(data, text)
        if self._lost:
            sink.closed()
        else:
            self.transport.resume_reading()  # paused if too many were held

    def _takes(self, event: Event) -> bool:
        """Take a data frame websockets parsed, if this connection is direct."""
        if self.direct and isinstance(event, Frame) and event.opcode in DATA_OPCODES:
            self._take(event)
            return True
        return False

    def _head_read(self) -> None:
        if self.direct:  # from the first frame on, the splitter reads them
            limit = self.protocol.max_message_size or _NO_LIMIT
            self._splitter = FrameSplitter(limit, masked=self.masked)
            # Its messages go to the sink, none to websockets' queue for recv().
            self.recv_messages = cast("Assembler", _TO_SINK)

    def _frames_received(self, data: bytes) -> None:
        splitter = self._splitter
        if splitter is None:
            super()._frames_received(data)
            return
        protocol = self.protocol
        taking = protocol.state is State.OPEN
        if not taking:
            # Closing: websockets parses the rest (it still reads frames until the peer's
            # close), starting with what the splitter held back of a frame.
            self._splitter = None
            super()._frames_received(splitter.release() + data)
            return
        splitter.max_size = protocol.max_message_size or _NO_LIMIT  # set at the upgrade
        for piece in splitter.feed(data):
            if type(piece) is Message:
                if taking:  # else dropped, as websockets drops what follows a close
                    self._deliver(piece.data, piece.text)
            else:
                super()._frames_received(piece.data)  # a control frame may start the closing
                taking = protocol.state is State.OPEN

    def _take(self, frame: Frame) -> None:
        """Assemble a message from frames websockets parsed (it has checked their order and
        size): fragments, and messages sent before the 101 response."""
        if self._failed:
            return
        if frame.opcode is not Opcode.CONT:
            self._text = frame.opcode is Opcode.TEXT
        parts = self._parts
        if not frame.fin:
            if parts is None:
                parts = self._parts = []
            parts.append(bytes(frame.data))
            if len(parts) >= MAX_FRAGMENTS:  # recv() would refuse them too
                self.fail(CloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        data = bytes(frame.data)
        if parts:
            data = b"".join([*parts, data])
            self._parts = None
        self._deliver(data, self._text)

    def _deliver(self, data: bytes, text: bool) -> None:
        if self._sink is not None:
            self._sink.message(data, text)
            return
        held = self._held
        if held is None:
            held = self._held = []
        held.append((data, text))
        if len(held) >= (self.max_queue_high or 16):
            self.transport.pause_reading()  # the handler has not attached yet: slow the peer

    def fail(self, code: CloseCode, reason: str) -> None:
        """Fail the connection as websockets' recv() would (`fail_connection`), take no
        message more, and abort it if the peer has not closed within close_timeout."""
        self._failed = True
        self._parts = None
        fail_connection(self, code, reason)
        self.loop.call_later(self.close_timeout or 0.0, self._abort)

    def _abort(self) -> None:
        if not self._lost:
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._lost = True
        if self._sink is not None:
            self._sink.closed()


class _ToSink:
    """What a direct connection has for websockets' `recv_messages`, the queue `recv()` reads
    (an `Assembler`: 1 KB per connection, most of it an empty deque): nothing, as its
    messages go to its sink. websockets only closes it (`connection_lost`), and puts no data
    frame in it (`_Direct._takes` takes them first). One for all."""

    __slots__ = ()

    def close(self) -> None:
        pass

    def _misused(self, *args: object) -> NoReturn:
        raise RuntimeError("a direct connection's messages go to its sink (`receiving`)")

    get = get_iter = put = _misused


_TO_SINK = _ToSink()


class DirectConnection(_Direct, GuardedConnection):
    """A `ServerConnection` that is direct for requests to one of `direct_paths`."""

    direct_paths: ClassVar[frozenset[str]] = frozenset()
    __slots__ = _DIRECT_SLOTS

    def process_event(self, event: Event) -> None:
        if self.request is None:  # the handshake request comes before any frame
            assert isinstance(event, Request)
            self.direct = urlsplit(event.path).path in self.direct_paths
        elif self._takes(event):
            return
        super().process_event(event)


class DirectClientConnection(_Direct, ClientConnection):
    """A `ClientConnection` that is direct once its handshake succeeds."""

    masked = False  # a server's frames are not masked
    __slots__ = _DIRECT_SLOTS

    def process_event(self, event: Event) -> None:
        if self.response is None:  # the handshake response comes before any frame
            assert isinstance(event, Response)
            self.direct = event.status_code == 101
        elif self._takes(event):
            return
        super().process_event(event)


def text_or_fail(ws: Connection, data: bytes) -> str | None:
    """A direct connection's text message as str; None if it is not UTF-8, after failing
    `ws` with websockets' own close code and reason (1007, "invalid start byte at position
    0"...), as its recv() does."""
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        reason = f"{exc.reason} at position {exc.start}"
        if isinstance(ws, _Direct):
            ws.fail(CloseCode.INVALID_DATA, reason)
        else:  # pragma: no cover - the fallback's recv() checks text itself
            fail_connection(ws, CloseCode.INVALID_DATA, reason)
        return None


def fail_connection(ws: Connection, code: CloseCode, reason: str) -> None:
    """Fail `ws` (RFC 6455 7.1.7) as websockets' recv() does on invalid UTF-8: send the close
    frame and end our side of TCP at once, without waiting for the peer's close (the
    handler's end aborts the connection if the peer has not closed within close_timeout)."""
    if ws.protocol.state is State.OPEN:
        ws.protocol.fail(code, reason)
        ws.send_data()


class _NoHeaders(Headers):
    """Headers that stay empty: those of every handshake `forget_handshake_headers` has
    seen, one object for all."""

    __slots__ = ()

    def _dropped(self, *args: object) -> NoReturn:
        raise TypeError("these handshake headers were dropped after the upgrade")

    __setitem__ = __delitem__ = clear = set_insecure = _dropped  # type: ignore[assignment]


_NO_HEADERS = _NoHeaders()


def forget_handshake_headers(ws: Connection) -> None:
    """Drop the headers of `ws`'s handshake request and response, which websockets keeps
    (`ws.request`, `ws.response`) for the connection's life, each name and value a str:
    3 KB per connection, a fifth of what an idle pending /twilio stream held (issue 11).
    For a connection whose handler reads none after the upgrade; the path and status
    stay. websockets reads them only during the handshake (test_websockets_contract)."""
    for message in (ws.request, ws.response):
        if message is not None:
            message.headers = _NO_HEADERS


def receiving(
    ws: Connection, sink: MessageSink, *, raw: bool = False
) -> AbstractAsyncContextManager[None]:
    """Give `sink` the messages of `ws`, in order, and `closed()` when the connection closes,
    for the time of an `async with` block: from the socket callbacks if `ws` is direct (the
    sink is attached at once, and held until the connection closes: the block costs
    nothing); else (DIRECT_RECEIVE off) from a task reading websockets' `recv()` while the
    block runs (its end cancels the task).

    The fallback gives text as str: websockets has checked its UTF-8 and refuses bad UTF-8
    itself (1007, with its own reason), where a direct connection leaves that to the sink.
    `raw` (fallback only) gives every message as bytes, unchecked and with `text` False, for
    a sink to which the kind does not matter, so that it sees what the direct path gives."""
    if isinstance(ws, _Direct) and ws.direct:
        ws.attach(sink)
        return _ATTACHED
    return _reading(ws, sink, raw)


# The block of a direct connection's `receiving`: stateless, so one for all (a generator's
# context manager cost each pending /twilio stream 0.6 KB).
_ATTACHED: AbstractAsyncContextManager[None] = nullcontext()


@asynccontextmanager
async def _reading(ws: Connection, sink: MessageSink, raw: bool) -> AsyncIterator[None]:
    async with asyncio.TaskGroup() as tasks:
        reader = tasks.create_task(_read(ws, sink, raw), name="recv_reader")
        try:
            yield
        finally:
            reader.cancel()


async def _read(ws: Connection, sink: MessageSink, raw: bool) -> None:
    """`recv()` every message of `ws` into `sink`, then tell it the connection closed."""
    try:
        while True:
            message = await ws.recv(decode=False if raw else None)
            sink.message(message, isinstance(message, str))
    except ConnectionClosed:  # recv() raises it once the connection is closed
        sink.closed()
