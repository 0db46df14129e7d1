"""One call's life on /twilio: from Twilio's `start` to the last transcript.

Three tasks under one TaskGroup: `twilio_receiver` (Twilio JSON → mixer → audio queue),
`deepgram_sender` (audio queue → Deepgram, KeepAlive when idle, CloseStream at the end) and
`deepgram_receiver` (Deepgram results → Hub). A normal end travels down the pipe: the
receiver flushes and queues `END`, the sender sends CloseStream, the Deepgram receiver
returns when Deepgram closes. A failure of the Deepgram link cancels the others.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from .config import Settings
from .deepgram import DeepgramLink
from .exceptions import AudioBacklog, ProxyError, TwilioProtocolError, close_frame_for
from .hub import CALL_ENDED, Ending, Hub
from .logs import CallLog, get_logger
from .mixer import StereoMixer
from .twilio_events import Dtmf, Media, Start, Stop, TwilioStream, UnknownEvent

logger = get_logger("call")

END: Final = None  # on the audio queue: no more audio will come

# Twilio sends `connected` and `start` as soon as it connects.
START_TIMEOUT_S = 10.0
# Audio waiting for Deepgram beyond this means Deepgram is not keeping up, or the stream's
# timestamps run far ahead of real time (each gap becomes silence that Deepgram bills).
MAX_QUEUED_AUDIO_S = 30


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
    try:
        hub.open_call(start.call_sid)
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
    """The mixer, the audio queue and the three tasks of one call."""

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
        # Filled as fast as Twilio sends audio (real time), emptied as fast as Deepgram takes
        # it; bounded by `max_queued_chunks` (END must always fit, so not by maxsize).
        self.audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.max_queued_chunks = MAX_QUEUED_AUDIO_S * 1000 // settings.chunk_ms
        self.unknown_events: set[str] = set()
        self.ending: Ending = CALL_ENDED
        self.link: DeepgramLink | None = None
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
        self.log.debug("custom parameters: %s", parameters)
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self.twilio_receiver(), name="twilio_receiver")
                # Twilio's audio queues up while Deepgram accepts the stream.
                self.link = await DeepgramLink.open(self.settings, self.mixer.channels, self.log)
                tasks.create_task(self.deepgram_sender(self.link), name="deepgram_sender")
                tasks.create_task(self.deepgram_receiver(self.link), name="deepgram_receiver")
        except* ProxyError as group:
            await self.fail(group.exceptions[0])
        finally:
            if self.link is not None:
                await self.link.close()

    async def twilio_receiver(self) -> None:
        """Feed Twilio's media to the mixer until `stop`, a closed socket or bad input."""
        try:
            async for message in self.ws:
                event = self.stream.receive(message)
                if isinstance(event, Media):
                    self.mixer.push(event.track, event.timestamp_ms, event.payload)
                    self._queue_audio(self.mixer.pop_chunks())
                elif isinstance(event, Stop):
                    break
                elif isinstance(event, Dtmf):
                    # Digits can be card numbers or PINs: not at INFO.
                    self.log.debug("DTMF %s on %s", event.digit, event.track)
                elif isinstance(event, UnknownEvent) and event.name not in self.unknown_events:
                    self.unknown_events.add(event.name)
                    self.log.warning("ignoring unknown Twilio event %r", event.name)
        except TwilioProtocolError as exc:
            # Bad input ends the stream, but what was said so far is still transcribed.
            await _refuse(self.ws, exc, self.log)
        except ConnectionClosedError as exc:
            self.log.warning("Twilio's connection dropped: %s", exc)
        self.audio.put_nowait(self.mixer.flush())
        self.audio.put_nowait(END)

    def _queue_audio(self, chunks: list[bytes]) -> None:
        if self.audio.qsize() + len(chunks) > self.max_queued_chunks:
            raise AudioBacklog(f"over {MAX_QUEUED_AUDIO_S} s of audio waiting for Deepgram")
        for chunk in chunks:
            self.audio.put_nowait(chunk)

    async def deepgram_sender(self, link: DeepgramLink) -> None:
        """Send queued audio; KeepAlive after `keepalive_s` without any; CloseStream at END."""
        while True:
            try:
                async with asyncio.timeout(self.settings.keepalive_s):
                    chunk = await self.audio.get()
            except TimeoutError:
                await link.keepalive()
                continue
            if chunk is END:
                await link.finish()
                return
            await link.send_audio(chunk)

    async def deepgram_receiver(self, link: DeepgramLink) -> None:
        """Publish every Deepgram message to the call's subscribers, verbatim."""
        call_sid = self.start.call_sid
        publish = self.hub.publish
        await link.forward_results(lambda text: publish(call_sid, text))

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
        """One line with the call's figures."""
        stats = self.mixer.stats
        link = self.link
        self.log.info(
            "call ended after %.1f s: %d packets, %d bytes to Deepgram, %d results, "
            "%d subscribers at the end, %d ms of gaps filled, %d late packets dropped, "
            "%d discontinuities",
            time.monotonic() - self.started_at,
            stats.packets,
            link.audio_bytes if link else 0,
            link.results if link else 0,
            subscribers,
            stats.gap_samples // 8,
            stats.late_packets,
            stats.discontinuities,
        )
