"""One call's life on /twilio: from Twilio's `start` to the last transcript.

Three tasks: `twilio_receiver` (Twilio JSON → mixer → audio buffer), and per Deepgram
stream (`deepgram.DeepgramSession`) `deepgram_sender` (audio buffer → Deepgram, KeepAlive
when idle, CloseStream at the end) and `deepgram_receiver` (Deepgram results → Hub). A
normal end travels down the pipe: the receiver flushes and closes the buffer, the sender
sends CloseStream, the Deepgram receiver returns when Deepgram closes. A Deepgram failure
that reconnecting cannot mend cancels the rest and closes the call's connections.
"""

from __future__ import annotations

import asyncio
import logging
import time

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from .audio_buffer import AudioBuffer
from .config import Settings
from .deepgram import DeepgramSession
from .doors import SECRET_PARAMETER, redacted, secret_matches
from .exceptions import ProxyError, TwilioProtocolError, Unauthorized, close_frame_for
from .hub import CALL_ENDED, CallInfo, Ending, Hub
from .logs import CallLog, get_logger
from .mixer import StereoMixer
from .twilio_events import Dtmf, Media, Start, Stop, TwilioStream, UnknownEvent

logger = get_logger("call")

# Twilio sends `connected` and `start` as soon as it connects.
START_TIMEOUT_S = 10.0


async def handle_twilio(ws: ServerConnection, hub: Hub, settings: Settings) -> None:
    """Serve one Twilio Media Stream connection until the call ends."""
    stream = TwilioStream()
    try:
        async with asyncio.timeout(START_TIMEOUT_S):
            start = await _wait_for_start(ws, stream)
    except TimeoutError:
        await _refuse(ws, TwilioProtocolError(f"no start within {START_TIMEOUT_S:.0f} s"), logger)
        return
    except ProxyError as exc:
        await _refuse(ws, exc, logger)
        return
    if start is None:
        logger.info("Twilio stream closed before its start message")
        return
    log = CallLog(logger, start.call_sid)
    secret = settings.twilio_stream_secret
    if secret and not secret_matches(start.custom_parameters, secret):
        hub.counters.refused_unauthorized += 1
        await _refuse(ws, Unauthorized("missing or wrong stream secret"), log)
        return
    try:
        hub.open_call(start.call_sid, call_info(start))
    except ProxyError as exc:
        await _refuse(ws, exc, log)
        return
    session = CallSession(ws, stream, start, hub, settings, log)
    try:
        await session.run()
    except Exception as exc:  # a bug: this call fails, the server and other calls go on
        log.exception("call failed")
        await session.fail(exc)
    finally:
        subscribers = hub.end_call(start.call_sid, session.ending)
        session.log_summary(subscribers)


def call_info(start: Start) -> CallInfo:
    """What viewers may know of a call: never the stream secret, which authenticates it."""
    parameters = {k: v for k, v in start.custom_parameters.items() if k != SECRET_PARAMETER}
    return CallInfo(start.call_sid, parameters, start.tracks, int(time.time() * 1000))


async def _wait_for_start(ws: ServerConnection, stream: TwilioStream) -> Start | None:
    """Read `connected` and `start`; None if the socket closes (or `stop` comes) first."""
    try:
        async for message in ws:
            event = stream.receive(message)
            if isinstance(event, Start):
                return event
            if isinstance(event, Stop):
                return None
    except ConnectionClosedError:
        pass
    return None


async def _refuse(
    ws: ServerConnection,
    exc: ProxyError,
    log: logging.Logger | logging.LoggerAdapter[logging.Logger],
) -> None:
    code, reason = close_frame_for(exc)
    log.warning("closing Twilio stream (%d): %s", code, exc)
    await ws.close(code, reason)


class CallSession:
    """The mixer, the audio buffer and the tasks of one call."""

    def __init__(
        self,
        ws: ServerConnection,
        stream: TwilioStream,
        start: Start,
        hub: Hub,
        settings: Settings,
        log: logging.LoggerAdapter[logging.Logger],
    ) -> None:
        self.ws = ws
        self.stream = stream
        self.start = start
        self.hub = hub
        self.settings = settings
        self.log = log
        self.mixer = StereoMixer(
            start.tracks, chunk_ms=settings.chunk_ms, max_lag_ms=settings.max_track_lag_ms
        )
        channels = self.mixer.channels
        # Filled as fast as Twilio sends audio (real time), emptied as fast as Deepgram takes
        # it; it only grows while Deepgram is unreachable, and never beyond its bound.
        self.audio = AudioBuffer(max_bytes=int(settings.audio_buffer_s * 8000 * channels))
        call_sid = start.call_sid
        self.deepgram = DeepgramSession(
            settings, channels, self.audio, lambda text: hub.publish(call_sid, text), log
        )
        self.deepgram.on_reconnect = self._count_reconnect
        self.unknown_events: set[str] = set()
        self.ending: Ending = CALL_ENDED
        self.started_at = time.monotonic()

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
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.twilio_receiver(), name="twilio_receiver")
                # Twilio's audio waits in the buffer while Deepgram accepts the stream.
                tasks.create_task(self.deepgram.run(), name="deepgram")
        except* ProxyError as group:
            await self.fail(group.exceptions[0])

    async def twilio_receiver(self) -> None:
        """Feed Twilio's media to the mixer until `stop`, a closed socket or bad input."""
        try:
            async for message in self.ws:
                event = self.stream.receive(message)
                if isinstance(event, Media):
                    self.mixer.push(event.track, event.timestamp_ms, event.payload)
                    for chunk in self.mixer.pop_chunks():
                        self.audio.put(chunk)
                elif isinstance(event, Stop):
                    break
                elif isinstance(event, Dtmf):
                    # Digits can be card numbers or PINs: not at INFO.
                    self.log.debug("DTMF %s on %s", event.digit, event.track)
                elif isinstance(event, UnknownEvent):
                    self._note_unknown(event.name)
        except TwilioProtocolError as exc:
            # Bad input ends the stream, but what was said so far is still transcribed.
            await _refuse(self.ws, exc, self.log)
        except ConnectionClosedError as exc:
            self.log.warning("Twilio's connection dropped: %s", exc)
        self.audio.put(self.mixer.flush())
        self.audio.close()

    def _note_unknown(self, name: str) -> None:
        self.hub.counters.unknown_events += 1
        if name not in self.unknown_events:
            self.unknown_events.add(name)
            self.log.warning("ignoring unknown Twilio event %r", name)

    def _count_reconnect(self) -> None:
        self.hub.counters.deepgram_reconnects += 1

    async def fail(self, exc: BaseException) -> None:
        """End the call on `exc`: tell Twilio and every subscriber why."""
        code, reason = close_frame_for(exc)
        self.ending = Ending(code, reason)
        if isinstance(exc, ProxyError):
            self.log.error("transcription failed: %s", exc)
        try:
            await self.ws.close(code, reason)
        except ConnectionClosed:
            pass

    def log_summary(self, subscribers: int) -> None:
        """One line with the call's figures; add them to the server's counters."""
        stats = self.mixer.stats
        counters = self.hub.counters
        counters.late_packets += stats.late_packets
        counters.discontinuities += stats.discontinuities
        counters.audio_dropped_bytes += self.audio.dropped_bytes
        self.log.info(
            "call ended after %.1f s: %d packets, %d bytes to Deepgram over %d stream(s), "
            "%d results, %d subscribers at the end, %d ms of gaps filled, %d late packets "
            "dropped, %d discontinuities, %d bytes of audio dropped in outages",
            time.monotonic() - self.started_at,
            stats.packets,
            self.deepgram.sent_bytes,
            self.deepgram.streams,
            self.deepgram.results,
            subscribers,
            stats.gap_samples // 8,
            stats.late_packets,
            stats.discontinuities,
            self.audio.dropped_bytes,
        )
