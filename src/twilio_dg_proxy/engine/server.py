"""`OfflineEngine`: the offline recogniser behind Deepgram's live protocol, on a local socket.

``ws://HOST:PORT/v1/listen`` takes the same upgrade, query, audio and control messages as
Deepgram (PROTOCOLS.md) and answers with the same messages, so the proxy's path to it is its
path to Deepgram. What differs is the recogniser: Whisper tiny.en, which has no streaming
mode. Each channel is cut into utterances by its `Segmenter`; every cut is decoded once into a
final ``Results``; with ``interim_results=true`` the utterance in progress is re-decoded at the
`InterimPacer`'s bounded rate.

Concurrency: per stream, one receiver task (audio in, controls, the segmenters, all cheap
numpy work) and one task per channel that decodes that channel's requests one at a time, in
order, in a shared pool of worker processes (decoding holds the GIL: in a thread it would
stall the event loop, and with it every call of the proxy sharing this process). So a channel
never has more than one decode in flight; interims that come due meanwhile are skipped;
finals are never skipped and are sent in order.

Failures: a worker process that dies or hangs is replaced (`workers.WorkerPool`) and the
streams go on; the utterance it was decoding is lost: its final is sent with no words (so the
finals still tile the timeline), counted in `EngineStats.lost_finals` and logged. The engine
takes at most `max_streams` streams at a time and refuses more with Deepgram's 429, which the
proxy retries.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from ..deepgram_server_protocol import (
    DATA_REASON,
    EMPTY_FRAME_REASON,
    REQUEST_ID_HEADER,
    Refusal,
    check_upgrade,
    control_type,
    finalize_channel,
    idle_deadline,
    iso_timestamp,
    metadata_message,
    parse_query,
    speech_started_message,
    utterance_end_message,
)
from ..listening import Listening, respond_refused, watch_deadline
from ..logs import get_logger
from . import DEFAULT_MAX_STREAMS
from .audio import Samples, mulaw_to_float, split_channels
from .model import MODEL_INFO, MODEL_UUID, Word, verify_weights
from .model import weights_dir as installed_weights_dir
from .options import OptionError, StreamOptions
from .pacer import InterimPacer
from .results import engine_results
from .segmenter import SAMPLE_RATE, Event, Segment, Segmenter, SpeechStarted, UtteranceGap
from .workers import WorkerLost, WorkerPool, WorkerStartError

__all__ = [
    "DEFAULT_MAX_STREAMS",
    "EngineError",
    "EngineStats",
    "OfflineEngine",
    "default_workers",
]

logger = get_logger("engine")

_HANDLER_ERROR_REASON: Final = "NET-0000: offline engine internal error"


def default_workers() -> int:
    """Worker processes by default: one per channel of a stereo call, fewer on one core."""
    return max(1, min(2, os.cpu_count() or 1))


class EngineError(RuntimeError):
    """The engine could not start (its worker processes failed to load the model)."""


@dataclass(slots=True)
class EngineStats:
    """Running totals of one engine, for logs and measurements.

    `audio_s` counts seconds of audio received per channel (a stereo second counts two);
    `final_decode_s` and `interim_decode_s` the wall-clock seconds that decodes took, seen
    from the event loop (queueing in the pool included). `lost_finals` counts utterances sent
    with no words because their decode was lost (its worker died or hung, or none was free
    within the decode timeout); `lost_interims` the interims skipped that way.
    `refused_streams` counts upgrades refused with 429 at `max_streams`.
    """

    streams: int = 0
    audio_s: float = 0.0
    final_decodes: int = 0
    final_decode_s: float = 0.0
    interim_decodes: int = 0
    interim_decode_s: float = 0.0
    lost_finals: int = 0
    lost_interims: int = 0
    refused_streams: int = 0


class OfflineEngine(Listening):
    """The engine, started and stopped as an async context manager.

    ``async with OfflineEngine(port=0, workers=2) as engine:`` checks the weights, starts
    `workers` processes that load the model (a few seconds), then serves on `host`:`port`
    (0 picks a free port); `engine.url` is the listen URL to give the proxy as DEEPGRAM_URL.
    Leaving the block closes every stream (1001) and stops the workers.

    `idle_timeout_s` is Deepgram's NET-0001 rule (close with 1011 when neither audio nor a
    control message arrived for that long; KeepAlive alone does not hold a stream that never
    received audio). `interim_interval_s` is the least time between two interim decodes of a
    channel. `final_beam_size` is Whisper's beam for finals (interims are greedy).
    `max_streams` bounds the streams served at once; more are refused with HTTP 429 and
    Deepgram's JSON body. `decode_timeout_s` bounds the wait for one decode, queueing
    included: a worker that takes longer is replaced, and the utterance is lost.
    `weights` overrides the model directory (tests); it is checked against the recorded sums
    all the same.

    Raises, on entry: WeightsError (weights missing or altered), EngineError (the workers
    failed to start), OSError (cannot listen).

    A worker process that dies (or hangs) is replaced while the streams go on (`worker_pids`
    names the workers, `worker_restarts` counts replacements). The workers are started with
    multiprocessing's spawn method, which imports the parent's
    main module in each worker: a script that starts an engine needs the usual
    ``if __name__ == "__main__":`` guard (``python -m twilio_dg_proxy`` and pytest have it).
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        workers: int | None = None,
        idle_timeout_s: float = 10.0,
        interim_interval_s: float = 1.0,
        final_beam_size: int = 1,
        max_streams: int = DEFAULT_MAX_STREAMS,
        decode_timeout_s: float = 30.0,
        weights: Path | None = None,
    ) -> None:
        workers = default_workers() if workers is None else workers
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        if interim_interval_s < 0:
            raise ValueError(f"interim_interval_s must not be negative, got {interim_interval_s}")
        if final_beam_size < 1:
            raise ValueError(f"final_beam_size must be at least 1, got {final_beam_size}")
        if max_streams < 1:
            raise ValueError(f"max_streams must be at least 1, got {max_streams}")
        if decode_timeout_s <= 0:
            raise ValueError(f"decode_timeout_s must be positive, got {decode_timeout_s}")
        super().__init__(host, port)
        self.workers = workers
        self.idle_timeout_s = idle_timeout_s
        self.interim_interval_s = interim_interval_s
        self.final_beam_size = final_beam_size
        self.max_streams = max_streams
        self.decode_timeout_s = decode_timeout_s
        self.stats = EngineStats()
        self._weights = weights
        self._pool: WorkerPool | None = None
        # Connections admitted at the upgrade, from then until their handler ends: counted
        # before the 101 is sent, so simultaneous upgrades cannot all slip under the bound.
        self._admitted: set[ServerConnection] = set()

    @property
    def worker_pids(self) -> frozenset[int]:
        """The process ids of the recogniser's workers running now (only while started)."""
        return self._started_pool().pids

    @property
    def worker_restarts(self) -> int:
        """Workers started in the place of one that died or hung."""
        return 0 if self._pool is None else self._pool.restarts

    @property
    def decodes_in_flight(self) -> int:
        """Decodes running in a worker or waiting for one."""
        return 0 if self._pool is None else self._pool.in_flight

    @property
    def open_streams(self) -> int:
        """Streams admitted and not yet ended (at most `max_streams`)."""
        return len(self._admitted)

    def _started_pool(self) -> WorkerPool:
        if self._pool is None:
            raise RuntimeError("OfflineEngine is not started")
        return self._pool

    async def __aenter__(self) -> Self:
        """Check the weights, start and warm the workers, then listen; ready when it returns."""
        if self._server is not None or self._pool is not None:
            raise RuntimeError("OfflineEngine is already started")
        directory = self._weights or installed_weights_dir()
        await asyncio.to_thread(verify_weights, directory)
        # Threads per worker: the cores shared out, so that the workers do not fight.
        threads = max(1, (os.cpu_count() or 1) // self.workers)
        pool = WorkerPool(
            self.workers, str(directory), threads, decode_timeout_s=self.decode_timeout_s
        )
        try:
            await pool.__aenter__()
        except WorkerStartError as exc:
            raise EngineError(
                "the recogniser's worker processes failed to start (see the error above)"
            ) from exc
        self._pool = pool
        try:
            await self._start_serving(self._handle)
        except BaseException:
            await self._stop_pool()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every stream, wait for their handlers, then stop the workers."""
        await self._stop_serving()
        await self._stop_pool()

    async def decode(self, audio: Samples, *, final: bool) -> list[Word]:
        """Transcribe mono 8 kHz `audio` in a worker process, for a final or an interim.

        Raises WorkerLost when the decode got no answer within `decode_timeout_s` (its worker
        died or hung, or none was free)."""
        pool = self._started_pool()
        beam = self.final_beam_size if final else 1
        started = time.perf_counter()
        words = await pool.decode(audio, beam)
        elapsed = time.perf_counter() - started
        if final:
            self.stats.final_decodes += 1
            self.stats.final_decode_s += elapsed
        else:
            self.stats.interim_decodes += 1
            self.stats.interim_decode_s += elapsed
        return words

    async def _stop_pool(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.__aexit__(None, None, None)

    # Handshake.

    def _refusal(self, request: Request) -> Refusal | None:
        refusal = check_upgrade(request.path, request.headers, api_key=None)
        if refusal is None:
            try:
                StreamOptions.from_query(parse_query(request.path))
            except OptionError as exc:
                refusal = Refusal(HTTPStatus.BAD_REQUEST, "Bad Request", f"Bad Request: {exc}")
        if refusal is not None:
            logger.debug("refused %s: %s", request.path, refusal.message)
        return refusal

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        response = super()._process_request(connection, request)
        if response is not None:
            return response
        if len(self._admitted) >= self.max_streams:
            self.stats.refused_streams += 1
            logger.warning(
                "refused a stream with 429: %d streams open, the most this engine takes",
                len(self._admitted),
            )
            return respond_refused(
                connection,
                Refusal(
                    HTTPStatus.TOO_MANY_REQUESTS,
                    "Too Many Requests",
                    f"Too Many Requests: the offline engine serves at most {self.max_streams} "
                    "streams at a time",
                ),
            )
        self._admitted.add(connection)
        return None

    # Streams.

    async def _handle(self, ws: ServerConnection) -> None:
        """Own one stream: its receiver, its channel tasks and its idle deadline."""
        assert ws.request is not None and ws.response is not None  # set by the handshake
        options = StreamOptions.from_query(parse_query(ws.request.path))  # checked at upgrade
        stream = _Stream(self, ws, options, ws.response.headers[REQUEST_ID_HEADER])
        self.stats.streams += 1
        logger.debug("stream %s opened: %s", stream.request_id, options)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(channel.run()) for channel in stream.channels]
                receiver = tg.create_task(stream.receive())
                await watch_deadline(receiver, stream.deadline, stream.close_idle)
                for task in tasks:
                    task.cancel()  # a no-op for those that ended after CloseStream
        finally:
            self._admitted.discard(ws)
            # A no-op when already closed; after a bug it tells the client with 1011.
            await ws.close(CloseCode.INTERNAL_ERROR, _HANDLER_ERROR_REASON)
            logger.debug(
                "stream %s closed (%s): %.1f s of audio",
                stream.request_id,
                ws.close_code,
                stream.duration,
            )


class _Stream:
    """One connection's state: the audio received, its channels, when it was last active."""

    def __init__(
        self, engine: OfflineEngine, ws: ServerConnection, options: StreamOptions, request_id: str
    ) -> None:
        self.engine = engine
        self.ws = ws
        self.options = options
        self.request_id = request_id
        self.channels = [_Channel(self, index) for index in range(options.channels)]
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self.closing = False  # CloseStream received: no idle rule while the last finals decode
        self._received = 0
        self._sha256 = hashlib.sha256()
        self._partial = b""  # an incomplete sample frame (fewer bytes than channels)

    @property
    def duration(self) -> float:
        """Seconds of audio received (whole sample frames)."""
        return self._received // len(self.channels) / SAMPLE_RATE

    def deadline(self) -> tuple[float, str] | None:
        """The idle deadline (NET-0001) and its reason; None once CloseStream arrived."""
        if self.closing:
            return None
        return idle_deadline(
            opened_at=self.opened_at,
            last_activity=self.last_activity,
            got_audio=self._received > 0,
            idle_timeout_s=self.engine.idle_timeout_s,
        )

    async def close_idle(self, reason: str) -> None:
        """Close the stream with 1011 and `reason`: its idle deadline passed."""
        await self.ws.close(CloseCode.INTERNAL_ERROR, reason)

    async def receive(self) -> None:
        """Read audio and control messages until the stream ends (CloseStream, error, close)."""
        try:
            while True:
                message = await self.ws.recv()
                if isinstance(message, bytes):
                    if not message:
                        # The deprecated end-of-stream signal; Deepgram now fails the stream.
                        await self.ws.close(CloseCode.INTERNAL_ERROR, EMPTY_FRAME_REASON)
                        return
                    self.feed(message)
                    # recv() returns buffered messages without yielding: a burst of audio
                    # (a replay after a reconnect) would hold the loop for its whole length.
                    await asyncio.sleep(0)
                    continue
                kind = control_type(message)
                if kind is None:
                    await self.ws.close(CloseCode.POLICY_VIOLATION, DATA_REASON)
                    return
                # Deepgram's NET-0001 counts any message as activity, controls included.
                self.last_activity = time.monotonic()
                if kind == "Finalize":
                    self.finalize(finalize_channel(message))
                elif kind == "CloseStream":
                    await self.close_stream()
                    return
        except ConnectionClosed:
            return

    def feed(self, audio: bytes) -> None:
        """Take interleaved mu-law audio: decode it and push each channel to its segmenter."""
        self._received += len(audio)
        self._sha256.update(audio)
        self.last_activity = time.monotonic()
        self.engine.stats.audio_s += len(audio) / SAMPLE_RATE
        data = self._partial + audio
        usable = len(data) - len(data) % len(self.channels)
        self._partial = data[usable:]
        if not usable:
            return
        samples = split_channels(mulaw_to_float(data[:usable]), len(self.channels))
        for channel, channel_samples in zip(self.channels, samples, strict=True):
            channel.add(channel.segmenter.push(channel_samples))

    def finalize(self, only: int | None) -> None:
        """Cut every channel (or channel `only`) into a final marked ``from_finalize``."""
        for channel in self.channels:
            if only is None or channel.index == only:
                segment = channel.segmenter.finalize()
                channel.add([segment] if segment else [])

    async def close_stream(self) -> None:
        """Cut every channel, wait for all their finals to be sent, send Metadata, close 1000."""
        self.closing = True
        for channel in self.channels:
            segment = channel.segmenter.close()
            channel.closing = True
            channel.add([segment] if segment else [])
        await asyncio.gather(*(channel.done.wait() for channel in self.channels))
        created = iso_timestamp(datetime.now(UTC))
        await self.send(
            metadata_message(
                request_id=self.request_id,
                created=created,
                duration=self.duration,
                channels=len(self.channels),
                sha256=self._sha256.hexdigest(),
                model_uuid=MODEL_UUID,
                model_info=MODEL_INFO,
            )
        )
        await self.ws.close(CloseCode.NORMAL_CLOSURE)

    async def send(self, message: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(message))


class _Channel:
    """One channel of a stream: its segmenter, its queue of events, and the task that decodes
    them one at a time (finals first, then an interim when the pacer allows)."""

    def __init__(self, stream: _Stream, index: int) -> None:
        self.stream = stream
        self.index = index
        self.segmenter = Segmenter(stream.options.segmenter_config())
        self.pacer = InterimPacer(interval_s=stream.engine.interim_interval_s)
        self.closing = False
        self.done = asyncio.Event()  # run() has sent everything after CloseStream
        self._events: deque[Event] = deque()
        self._wake = asyncio.Event()
        self._last_word_end: float | None = None  # of the words since the last UtteranceEnd

    def add(self, events: list[Event]) -> None:
        """Queue `events` (in order) and wake the channel's task (new audio may make an
        interim due, so it is woken even with no event)."""
        self._events.extend(events)
        self._wake.set()

    async def run(self) -> None:
        """Send this channel's messages until CloseStream's last final, or the connection ends."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                # Cleared before looking at the queue: an add() during a decode below sets it
                # again and the wait at the end returns at once.
                self._wake.clear()
                while self._events:
                    await self._handle(self._events.popleft())
                if self.closing:
                    return
                delay = None
                if self.stream.options.interim_results:
                    pending = self.segmenter.pending_samples()
                    if pending:
                        delay = self.pacer.delay(now=loop.time(), audio_s=pending / SAMPLE_RATE)
                if delay == 0:
                    await self._interim()
                    continue
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
        except ConnectionClosed:
            return
        finally:
            # Also when the connection died: close_stream() must not wait for ever.
            self.done.set()

    async def _handle(self, event: Event) -> None:
        options = self.stream.options
        channels = len(self.stream.channels)
        match event:
            case Segment():
                await self._final(event)
            case SpeechStarted(at=at) if options.vad_events:
                await self.stream.send(
                    speech_started_message(
                        channel=self.index, channels=channels, timestamp=at / SAMPLE_RATE
                    )
                )
            case UtteranceGap() if options.utterance_end_ms and self._last_word_end is not None:
                await self.stream.send(
                    utterance_end_message(
                        channel=self.index, channels=channels, last_word_end=self._last_word_end
                    )
                )
                self._last_word_end = None

    async def _final(self, segment: Segment) -> None:
        words: list[Word] = []
        if segment.has_speech:
            try:
                words = await self.stream.engine.decode(segment.audio, final=True)
            except WorkerLost as exc:
                # Still sent, with no words: the finals keep tiling the channel's timeline and
                # a speech_final still ends the utterance for the client.
                self.stream.engine.stats.lost_finals += 1
                logger.warning(
                    "stream %s channel %d: the utterance at %.1f-%.1f s is lost (%s)",
                    self.stream.request_id,
                    self.index,
                    segment.start / SAMPLE_RATE,
                    segment.end / SAMPLE_RATE,
                    exc,
                )
        message = self._results(
            words,
            audio_start=segment.audio_start,
            start=segment.start,
            end=segment.end,
            is_final=True,
            speech_final=segment.speech_final,
            from_finalize=segment.from_finalize,
        )
        dg_words = message["channel"]["alternatives"][0]["words"]
        if dg_words:
            self._last_word_end = dg_words[-1]["end"]
        self.pacer.reset()
        await self.stream.send(message)

    async def _interim(self) -> None:
        pending = self.segmenter.pending()
        if pending is None:
            return
        loop = asyncio.get_running_loop()
        try:
            words = await self.stream.engine.decode(pending.audio, final=False)
        except WorkerLost:
            # An interim is only a preview; its final follows. Counted, and paced as if
            # decoded, so that a failing pool is not asked again at once.
            self.stream.engine.stats.lost_interims += 1
            self.pacer.decoded(now=loop.time(), audio_s=len(pending.audio) / SAMPLE_RATE)
            return
        self.pacer.decoded(now=loop.time(), audio_s=len(pending.audio) / SAMPLE_RATE)
        await self.stream.send(
            self._results(
                words,
                audio_start=pending.audio_start,
                start=pending.start,
                end=pending.end,
                is_final=False,
                speech_final=False,
                from_finalize=False,
            )
        )

    def _results(
        self,
        words: list[Word],
        *,
        audio_start: int,
        start: int,
        end: int,
        is_final: bool,
        speech_final: bool,
        from_finalize: bool,
    ) -> dict[str, Any]:
        return engine_results(
            words,
            offset=audio_start / SAMPLE_RATE,
            start=start / SAMPLE_RATE,
            end=end / SAMPLE_RATE,
            channel=self.index,
            channels=len(self.stream.channels),
            is_final=is_final,
            speech_final=speech_final,
            from_finalize=from_finalize,
            punctuate=self.stream.options.punctuate,
            request_id=self.stream.request_id,
        )
