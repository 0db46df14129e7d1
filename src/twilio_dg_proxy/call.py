"""One call's life on /twilio: from Twilio's `start` to the last transcript.

Twilio's messages are taken as they arrive, without a task (`intake.StreamIntake`: order
rules → mixer → audio buffer), and Deepgram's results are published likewise; with
DIRECT_RECEIVE off, one task per connection reads them with `recv()` instead
(`direct_connection.receiving`). The call's own task, the connection's handler, runs the
Deepgram side (`deepgram.DeepgramSession`: per Deepgram stream, the sender of the audio
buffer, KeepAlive when idle, CloseStream at the end, then the wait for Deepgram's close,
after its last results reached the Hub). How Twilio's stream ended is answered from a
callback: bad input by a refusal (a task made then), a bug by interrupting the Deepgram
side (`interrupts.Interrupt`). A normal end travels down the pipe: the intake flushes and
closes the buffer, the sender sends CloseStream, the Deepgram stream ends when Deepgram
closes. A Deepgram failure that reconnecting cannot mend ends the call and closes the call's
connections.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from .auth import SECRET_PARAMETER, redacted, secret_matches
from .config import Settings
from .deadlines import Deadlines
from .deepgram import DEFAULT_PINGS, DeepgramSession, Pings
from .direct_connection import fail_connection, receiving
from .exceptions import (
    DeepgramError,
    ProxyError,
    TwilioProtocolError,
    Unauthorized,
    close_frame_for,
    fails_connection,
)
from .hub import CALL_ENDED, Ending, Hub
from .intake import Log, StreamIntake
from .interrupts import Interrupt
from .logs import CallLog, get_logger
from .observations import NO_OBSERVER, CallEnd, Observer, is_bad_input
from .twilio_events import Start
from .viewer_protocol import CallInfo

logger = get_logger("call")

# Twilio sends `connected` and `start` as soon as it connects: the default start timeout.
START_TIMEOUT_S = 10.0
# Until its `start` is accepted, a stream may send messages of this size at most (1009
# beyond; server.py sets it at the upgrade): `connected` is ~70 bytes and `start` ~1 KB plus
# its parameters (each under 500 characters), so an unauthenticated connection can hold
# little. Then TWILIO_MAX_MESSAGE_BYTES applies.
START_MAX_MESSAGE_BYTES = 16 << 10


def _no_op(ws: ServerConnection) -> None:
    pass


async def handle_twilio(
    ws: ServerConnection,
    hub: Hub,
    settings: Settings,
    *,
    start_deadlines: Deadlines,
    deepgram_pings: Pings = DEFAULT_PINGS,
    started: Callable[[ServerConnection], None] = _no_op,
    ended: Callable[[ServerConnection], None] = _no_op,
) -> None:
    """Serve one Twilio Media Stream connection until the call ends: a `DirectConnection`
    directly, any other through `recv()`. A stream without `start` within
    `start_deadlines.delay_s` is closed (1008). `started(ws)` is called once its `start` is
    accepted (authenticated, and its call open), TWILIO_MAX_MESSAGE_BYTES applying from then
    on; `ended(ws)` at the very end.

    Until `start`, this coroutine's frame, the intake and one future are all a stream holds
    here (issue 11): the wait is inline, timed by the server's shared `Deadlines`, and what
    follows `start` is made after it (`_serve_call`)."""
    intake: StreamIntake | None = None
    try:  # from the start: `ended(ws)` must follow whatever happens here
        intake = StreamIntake(
            chunk_ms=settings.chunk_ms,
            max_lag_ms=settings.max_track_lag_ms,
            buffer_s=settings.audio_buffer_s,
            log=logger,
        )
        async with receiving(ws, intake):
            if intake.start is None and not intake.ended:  # (held messages may hold both)
                waiter = intake.waiter()
                start_deadlines.add(waiter)
                try:
                    await waiter  # done at `start`, at the end, or at the deadline
                finally:
                    start_deadlines.discard(waiter)
            start = intake.start
            if start is None:
                await _not_started(ws, intake, hub, start_deadlines.delay_s)
                return
            await _serve_call(ws, intake, start, hub, settings, deepgram_pings, started)
    finally:
        if intake is not None:
            hub.counters.unknown_events += intake.unknown_count
        ended(ws)


async def _not_started(
    ws: ServerConnection, intake: StreamIntake, hub: Hub, start_timeout_s: float
) -> None:
    """Answer a stream that ended, or timed out, before its `start`."""
    if intake.error is not None:
        await _refuse(ws, intake.error, logger, hub.observer)
    elif intake.ended:
        logger.info("Twilio stream closed before its start message")
    else:
        error = TwilioProtocolError(f"no start within {start_timeout_s:.0f} s")
        await _refuse(ws, error, logger, hub.observer)


async def _serve_call(
    ws: ServerConnection,
    intake: StreamIntake,
    start: Start,
    hub: Hub,
    settings: Settings,
    deepgram_pings: Pings,
    started: Callable[[ServerConnection], None],
) -> None:
    log = intake.log = CallLog(logger, start.call_sid)
    secret = settings.twilio_stream_secret
    if secret and not secret_matches(start.custom_parameters, secret):
        hub.counters.refused_unauthorized += 1
        await _refuse(ws, Unauthorized("missing or wrong stream secret"), log)
        return
    try:
        hub.open_call(start.call_sid, call_info(start))
    except ProxyError as exc:
        await _refuse(ws, exc, log, hub.observer)
        return
    ws.protocol.max_message_size = settings.twilio_max_message_bytes
    started(ws)
    session = CallSession(ws, intake, start, hub, settings, log, deepgram_pings=deepgram_pings)
    try:
        await session.run()
    except Exception as exc:  # a bug: this call fails, the server and other calls go on
        log.exception("call failed")
        await session.fail(exc)
    finally:
        subscribers = hub.end_call(start.call_sid, session.ending)
        hub.observer.call_ended(session.how)
        session.log_summary(subscribers)


def call_info(start: Start) -> CallInfo:
    """What viewers may know of a call: never the stream secret, which authenticates it."""
    parameters = {k: v for k, v in start.custom_parameters.items() if k != SECRET_PARAMETER}
    return CallInfo(start.call_sid, parameters, start.tracks, int(time.time() * 1000))


async def _refuse(
    ws: ServerConnection, exc: Exception, log: Log, observer: Observer = NO_OBSERVER
) -> None:
    """Close Twilio's connection with the code and reason that `exc` calls for, or fail it
    for the errors that fail a connection (`exceptions.fails_connection`); tell `observer`
    of bad input."""
    code, reason = close_frame_for(exc)
    if is_bad_input(exc):
        observer.refused_bad_input()
    if isinstance(exc, ProxyError):
        log.warning("closing Twilio stream (%d): %s", code, exc)
    else:
        log.error("closing Twilio stream (%d) on a bug", code, exc_info=exc)
    if fails_connection(exc):
        fail_connection(ws, code, reason)
    else:
        await ws.close(code, reason)


class CallSession:
    """The Deepgram side of one call whose stream has started, run by the call's task."""

    __slots__ = (
        "_refusal",
        "_twilio_failed",
        "audio",
        "deepgram",
        "ending",
        "how",
        "hub",
        "intake",
        "log",
        "mixer",
        "settings",
        "start",
        "started_at",
        "ws",
    )

    def __init__(
        self,
        ws: ServerConnection,
        intake: StreamIntake,
        start: Start,
        hub: Hub,
        settings: Settings,
        log: logging.LoggerAdapter[logging.Logger],
        *,
        deepgram_pings: Pings = DEFAULT_PINGS,
    ) -> None:
        assert intake.mixer is not None and intake.audio is not None  # made by `start`
        self.ws = ws
        self.intake = intake
        self.mixer = intake.mixer
        self.audio = intake.audio
        self.start = start
        self.hub = hub
        self.settings = settings
        self.log = log
        call_sid = start.call_sid
        self.deepgram = DeepgramSession(
            settings,
            self.mixer.channels,
            self.audio,
            lambda text: hub.publish(call_sid, text),  # (a partial is 50 B more)
            log,
            pings=deepgram_pings,
            observer=hub.observer,
        )
        self.deepgram.on_reconnect = self._count_reconnect
        self.ending: Ending = CALL_ENDED
        self.how: CallEnd = "normal"  # how it ended, for the metrics
        self.started_at = time.monotonic()
        # Twilio's side ending with a bug ends the Deepgram side (run in this task) with it.
        self._twilio_failed = Interrupt()
        self._refusal: asyncio.Task[None] | None = None  # refusing bad input, only then

    async def run(self) -> None:
        """Stream the call to Deepgram and its results to the Hub until the call ends."""
        parameters = dict(self.start.custom_parameters)
        # Parameter values are often phone numbers: only their names at INFO.
        self.log.info(
            "call started: tracks %s, parameters %s",
            "+".join(self.start.tracks),
            sorted(parameters),
        )
        self.log.debug("custom parameters: %s", redacted(parameters))
        intake, twilio_end = self.intake, None
        if intake.ended:  # with its start (held messages)
            self._twilio_ended()
        else:
            twilio_end = intake.waiter()
            twilio_end.add_done_callback(self._twilio_ended)
        try:
            try:
                with self._twilio_failed:
                    # Twilio's audio waits in the buffer while Deepgram accepts the stream.
                    await self.deepgram.run()
            finally:  # (its stream has ended, unless the call fails: then no more word)
                if twilio_end is not None:
                    twilio_end.remove_done_callback(self._twilio_ended)
            if self._refusal is not None:
                await self._refusal
        except ProxyError as exc:
            await self._stop_refusal()
            await self.fail(exc)
        finally:
            await self._stop_refusal()

    def _twilio_ended(self, _: object = None) -> None:
        """Answer how Twilio's stream ended, once it has (a callback of the intake's end).

        The messages themselves are taken by the intake as they arrive (`StreamIntake`), and
        it ends the audio buffer for the Deepgram sender: bad input ends the stream, but
        what was said so far is still transcribed. A bug ends the call (1011)."""
        error = self.intake.error
        if isinstance(error, ProxyError):
            self.how = "bad_input"
            refusing = _refuse(self.ws, error, self.log, self.hub.observer)
            self._refusal = asyncio.get_running_loop().create_task(refusing)
        elif error is not None:
            self._twilio_failed.fail(error)  # raised where the Deepgram side runs
        elif not self.intake.stopped:  # closed without `stop`: only worth a word if unclean
            closing = self.ws.protocol.close_exc
            if isinstance(closing, ConnectionClosedError):
                self.log.warning("Twilio's connection dropped: %s", closing)

    async def _stop_refusal(self) -> None:
        """Cancel the refusal if it is under way, and wait for it to end."""
        refusal = self._refusal
        if refusal is not None and not refusal.done():
            refusal.cancel()
            await asyncio.wait((refusal,))

    def _count_reconnect(self) -> None:
        self.hub.counters.deepgram_reconnects += 1

    async def fail(self, exc: BaseException) -> None:
        """End the call on `exc`: tell Twilio and every subscriber why."""
        code, reason = close_frame_for(exc)
        self.ending = Ending(code, reason)
        if isinstance(exc, DeepgramError):
            self.how = "deepgram_failed"
        else:
            self.how = "bad_input" if is_bad_input(exc) else "error"
        if isinstance(exc, ProxyError):
            self.log.error("transcription failed: %s", exc)
        try:
            await self.ws.close(code, reason)
        except ConnectionClosed:
            pass

    def log_summary(self, subscribers: int) -> None:
        """One line with the call's figures (also as the record's fields, for LOG_FORMAT=json);
        add them to the server's counters."""
        stats = self.mixer.stats
        counters = self.hub.counters
        counters.late_packets += stats.late_packets
        counters.discontinuities += stats.discontinuities
        counters.audio_dropped_bytes += self.audio.dropped_bytes
        counters.gap_ms += stats.gap_samples // 8
        figures = {
            "ended": self.how,
            "duration_s": round(time.monotonic() - self.started_at, 1),
            "packets": stats.packets,
            "deepgram_bytes": self.deepgram.sent_bytes,
            "deepgram_streams": self.deepgram.streams,
            "results": self.deepgram.results,
            "subscribers": subscribers,
            "gap_ms": stats.gap_samples // 8,
            "late_packets": stats.late_packets,
            "discontinuities": stats.discontinuities,
            "audio_dropped_bytes": self.audio.dropped_bytes,
        }
        self.log.info(
            "call ended after %(duration_s).1f s: %(packets)d packets, %(deepgram_bytes)d "
            "bytes to Deepgram over %(deepgram_streams)d stream(s), %(results)d results, "
            "%(subscribers)d subscribers at the end, %(gap_ms)d ms of gaps filled, "
            "%(late_packets)d late packets dropped, %(discontinuities)d discontinuities, "
            "%(audio_dropped_bytes)d bytes of audio dropped in outages",
            figures,
            extra=figures,
        )
