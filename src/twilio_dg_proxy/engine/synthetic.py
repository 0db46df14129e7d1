"""`SyntheticEngine`: a deterministic Deepgram-compatible server whose transcripts are derived
from the audio itself, for load and protocol tests.

It serves ``ws://127.0.0.1:<port>/v1/listen`` on an ephemeral port and speaks Deepgram's live
protocol (`deepgram_server_protocol`): it checks the upgrade like Deepgram (path,
``Authorization: Token <key>``, the mu-law query) and refuses with Deepgram's ``dg-error`` and
``dg-request-id`` headers; it answers interleaved mu-law audio with ``Results`` that reveal
which audio arrived on which channel (`transcript_for`); it honours ``KeepAlive``,
``Finalize`` and ``CloseStream``; and it applies Deepgram's NET-0001 idle rule. Every stream
records what it received and sent in a `SyntheticStream`, so tests and the benchmark can
assert on the wire. No recogniser, no extra dependencies: the benchmark runs it as the
Deepgram the proxy talks to. The fake Deepgram of the tests (`fakes.deepgram`) adds fault
knobs to it.

The pure half (`SyntheticTranscriber`, `transcript_for`, ...) is usable without sockets;
`SyntheticEngine` wraps it with websockets' asyncio server (`listening.Listening`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Self, TypeAlias

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request
from websockets.protocol import State

from ..deepgram_server_protocol import (
    DATA_REASON,
    EMPTY_FRAME_REASON,
    REQUEST_ID_HEADER,
    SAMPLE_RATE,
    JSONDict,
    Refusal,
    check_upgrade,
    control_type,
    idle_deadline,
    iso_timestamp,
    metadata_message,
    parse_query,
    results_message,
)
from ..listening import Listening, watch_deadline

__all__ = [
    "MULAW_SILENCE",
    "SyntheticEngine",
    "SyntheticSession",
    "SyntheticStream",
    "SyntheticTranscriber",
    "audio_digest",
    "is_silence",
    "transcript_for",
]

_SAMPLES_PER_MS: Final = SAMPLE_RATE // 1000
MULAW_SILENCE: Final = 0xFF
"""The mu-law byte for a zero sample; a channel window made only of it transcribes to ""."""

_HANDLER_ERROR_REASON: Final = "fake deepgram internal error"


# --- Pure ----------------------------------------------------------------------------------


def audio_digest(audio: bytes) -> str:
    """Return eight hex digits identifying `audio` (BLAKE2s), as used in synthetic transcripts."""
    return hashlib.blake2s(audio, digest_size=4).hexdigest()


def is_silence(audio: bytes) -> bool:
    """Return whether `audio` (one channel's mu-law bytes) is all `MULAW_SILENCE`."""
    # bytes.count runs in C: no per-byte Python loop on the hot path.
    return audio.count(MULAW_SILENCE) == len(audio)


def transcript_for(channel_audio: bytes, *, channel: int, window: int) -> str:
    """Return the synthetic transcript of one channel's window of mu-law audio.

    ``""`` when the audio is silence, else ``"ch<channel> w<window> <audio_digest>"``: a test
    knows from the text which channel and window it covers and which bytes were in it.
    """
    if is_silence(channel_audio):
        return ""
    return f"ch{channel} w{window} {audio_digest(channel_audio)}"


class SyntheticTranscriber:
    """The sans-I/O core of a synthetic stream: audio and controls in, Deepgram message dicts out.

    Audio is cut into windows of `result_ms` counted from the last flush; each full window gives
    one final ``Results`` per channel, in channel order. With `interim_results`, each window
    first gives one interim (``is_final: false``) per channel for its first half.

    ``speech_final`` rule: a final whose channel audio is not silence is ``speech_final`` on every
    4th window of the stream (window index 3, 7, ...); a silent final is ``speech_final`` when it
    follows non-silent finals of that channel not yet closed by a ``speech_final``. So every
    utterance ends with exactly one ``speech_final``.
    """

    def __init__(
        self, *, channels: int, result_ms: int, interim_results: bool, request_id: str
    ) -> None:
        if channels < 1:
            raise ValueError(f"channels must be at least 1, got {channels}")
        if result_ms < 1:
            raise ValueError(f"result_ms must be at least 1, got {result_ms}")
        self.channels = channels
        self.interim_results = interim_results
        self.request_id = request_id
        self._window_bytes = channels * _SAMPLES_PER_MS * result_ms
        self._half_bytes = channels * (_SAMPLES_PER_MS * result_ms // 2)
        self._pending = bytearray()
        self._start_frames = 0  # timeline position of _pending[0], in sample frames
        self._window = 0  # index of the next final window on this stream
        self._interim_sent = False
        self._open_utterance = [False] * channels
        self._received = 0
        self._sha256 = hashlib.sha256()

    @property
    def duration(self) -> float:
        """Seconds of audio received so far (whole sample frames)."""
        return self._received // self.channels / SAMPLE_RATE

    def feed(self, audio: bytes) -> list[JSONDict]:
        """Take interleaved mu-law audio; return the Results it completes, in sending order."""
        self._received += len(audio)
        self._sha256.update(audio)
        self._pending += audio
        out: list[JSONDict] = []
        while True:
            if (
                self.interim_results
                and not self._interim_sent
                and 0 < self._half_bytes <= len(self._pending)
            ):
                out += self._emit(bytes(self._pending[: self._half_bytes]), is_final=False)
                self._interim_sent = True
            if len(self._pending) < self._window_bytes:
                return out
            out += self._emit(bytes(self._pending[: self._window_bytes]), is_final=True)
            # Deleting from the front of a bytearray is cheap (CPython moves its start pointer).
            del self._pending[: self._window_bytes]

    def finalize(self) -> list[JSONDict]:
        """Flush the partial window into finals marked ``from_finalize: true`` (none if empty).

        A trailing incomplete sample frame stays pending for the next audio.
        """
        return self._flush(from_finalize=True)

    def close_stream(self, *, created: str) -> list[JSONDict]:
        """Flush what is left into finals, then return them followed by the Metadata message.

        `created` is the ISO 8601 time of the Metadata message (the caller reads the clock).
        """
        out = self._flush(from_finalize=False)
        out.append(
            metadata_message(
                request_id=self.request_id,
                created=created,
                duration=self.duration,
                channels=self.channels,
                sha256=self._sha256.hexdigest(),
            )
        )
        return out

    def _flush(self, *, from_finalize: bool) -> list[JSONDict]:
        usable = len(self._pending) - len(self._pending) % self.channels
        if usable == 0:
            return []
        out = self._emit(bytes(self._pending[:usable]), is_final=True, from_finalize=from_finalize)
        del self._pending[:usable]
        return out

    def _emit(
        self, window: bytes, *, is_final: bool, from_finalize: bool = False
    ) -> list[JSONDict]:
        channels = self.channels
        frames = len(window) // channels
        start = self._start_frames / SAMPLE_RATE
        duration = frames / SAMPLE_RATE
        out: list[JSONDict] = []
        for c in range(channels):
            transcript = transcript_for(window[c::channels], channel=c, window=self._window)
            speech_final = False
            if is_final:
                if transcript:
                    speech_final = self._window % 4 == 3
                    self._open_utterance[c] = not speech_final
                else:
                    speech_final = self._open_utterance[c]
                    self._open_utterance[c] = False
            out.append(
                results_message(
                    transcript=transcript,
                    channel=c,
                    channels=channels,
                    start=start,
                    duration=duration,
                    is_final=is_final,
                    speech_final=speech_final,
                    from_finalize=from_finalize,
                    request_id=self.request_id,
                )
            )
        if is_final:
            self._start_frames += frames
            self._window += 1
            self._interim_sent = False
        return out


# --- I/O -----------------------------------------------------------------------------------


class SyntheticStream:
    """What one accepted connection received and sent; filled in by the engine as it runs.

    Attributes: `request_id` (also the ``dg-request-id`` of the 101 response), `path`, `params`
    (the query), `headers` (of the upgrade request), `channels`, `audio` (every audio byte as
    received, interleaved; left empty when the engine was made with ``record=False``),
    `audio_bytes` (count of audio bytes), `audio_log` ((time.monotonic() at receipt, total audio
    bytes so far) per binary message), `controls` (the ``type`` of each control message, in
    order), `invalid_texts` (text messages that were not control messages), `sent` (every JSON
    text sent, in order; empty with ``record=False``), `sent_count`, `empty_frames`,
    `close_code` and `close_reason` (the engine's own when it closed first, else the peer's;
    None until closed), `closed` (set once the connection is closed and `close_code` final),
    `opened_at` and `last_activity` (time.monotonic() of the opening and of the last audio or
    control message).
    """

    def __init__(
        self,
        *,
        request_id: str,
        path: str,
        params: dict[str, str],
        headers: Headers,
        channels: int,
        record: bool = True,
    ) -> None:
        self.request_id = request_id
        self.path = path
        self.params = params
        self.headers = headers
        self.channels = channels
        self.audio = bytearray()
        self.audio_bytes = 0
        self.audio_log: list[tuple[float, int]] = []
        self.controls: list[str] = []
        self.invalid_texts: list[str] = []
        self.sent: list[str] = []
        self.sent_count = 0
        self.empty_frames = 0
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed = asyncio.Event()
        self.opened_at = time.monotonic()
        self.last_activity = self.opened_at
        self._record = record

    @property
    def got_audio(self) -> bool:
        """Whether any audio arrived on this stream."""
        return self.audio_bytes > 0

    def messages(self) -> list[JSONDict]:
        """Return the sent messages decoded from JSON (needs ``record=True``)."""
        return [json.loads(text) for text in self.sent]

    def _note_audio(self, audio: bytes) -> None:
        now = time.monotonic()
        self.audio_bytes += len(audio)
        if self._record:
            self.audio += audio
        self.audio_log.append((now, self.audio_bytes))
        self.last_activity = now

    def _note_sent(self, text: str) -> None:
        self.sent_count += 1
        if self._record:
            self.sent.append(text)


#: How a stream ends after a message: (close code, reason), or None to read on.
Close: TypeAlias = tuple[int, str] | None


class SyntheticSession:
    """What a synthetic stream answers to each message, without sockets: used by
    `SyntheticEngine` on websockets' connection and by the benchmark's lean fake Deepgram
    (`commands.bench.fake_server`) on websockets' Sans-I/O protocol.

    `receive` takes one message and returns the messages to send, in order, and the close
    that then ends the stream; `render` serialises each of them right before it is sent and
    records it on the stream. `dumps` serialises a message to JSON text (`json.dumps` by
    default; the benchmark's fake passes a faster one).
    """

    __slots__ = ("_dumps", "stream", "transcriber")

    def __init__(
        self,
        stream: SyntheticStream,
        transcriber: SyntheticTranscriber,
        dumps: Callable[[JSONDict], str] = json.dumps,
    ) -> None:
        self.stream = stream
        self.transcriber = transcriber
        self._dumps = dumps

    @classmethod
    def opened(
        cls,
        request: Request,
        request_id: str,
        *,
        result_ms: int,
        record: bool,
        dumps: Callable[[JSONDict], str] = json.dumps,
    ) -> Self:
        """The session of an upgrade accepted under `request_id` (`check_upgrade` passed)."""
        params = parse_query(request.path)
        stream = SyntheticStream(
            request_id=request_id,
            path=request.path,
            params=params,
            headers=request.headers,
            channels=int(params["channels"]),  # validated by check_upgrade
            record=record,
        )
        transcriber = SyntheticTranscriber(
            channels=stream.channels,
            result_ms=result_ms,
            interim_results=params.get("interim_results") == "true",
            request_id=request_id,
        )
        return cls(stream, transcriber, dumps)

    def receive(self, message: bytes | str) -> tuple[list[JSONDict], Close]:
        """The answer to one message from the client: what to send, then how to end."""
        stream = self.stream
        if isinstance(message, bytes):
            if not message:
                # The deprecated end-of-stream signal: recorded, so that tests can assert
                # that the proxy never sends one.
                stream.empty_frames += 1
                return [], (CloseCode.INTERNAL_ERROR, EMPTY_FRAME_REASON)
            stream._note_audio(message)
            return self.transcriber.feed(message), None
        kind = control_type(message)
        if kind is None:
            stream.invalid_texts.append(message)
            return [], (CloseCode.POLICY_VIOLATION, DATA_REASON)
        stream.controls.append(kind)
        # Deepgram words NET-0001 as no "audio data or a text message": any control counts.
        stream.last_activity = time.monotonic()
        if kind == "Finalize":
            return self.transcriber.finalize(), None
        if kind == "CloseStream":
            created = iso_timestamp(datetime.now(UTC))
            return self.transcriber.close_stream(created=created), (CloseCode.NORMAL_CLOSURE, "")
        return [], None

    def render(self, message: JSONDict) -> str:
        """`message` as JSON text, recorded as sent; a Results is stamped first."""
        stream = self.stream
        if message["type"] == "Results":
            # Not a Deepgram field: the send time and sequence number, stamped as late as
            # possible, so that a benchmark measures the proxy's fan-out latency
            # (bench.measure.fake_stamp); last, where the benchmark looks for it.
            message["fake"] = {"sent_at": time.monotonic(), "seq": stream.sent_count}
        text = self._dumps(message)
        stream._note_sent(text)
        return text


class SyntheticEngine(Listening):
    """A synthetic Deepgram live endpoint on 127.0.0.1, started and closed as an async context
    manager.

    Options: `api_key` (require ``Authorization: Token <api_key>``, else 401), `result_ms` (one
    final per channel per `result_ms` of audio), `idle_timeout_s` (the NET-0001 rule), `record`
    (keep audio bytes and sent texts; turn off in long benchmarks to bound memory).

    `streams` lists accepted connections in order; `refusals` lists refused upgrades in order.
    Closing the engine closes every stream (1001, by websockets' server).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        result_ms: int = 250,
        idle_timeout_s: float = 10.0,
        record: bool = True,
    ) -> None:
        if result_ms < 1:
            raise ValueError(f"result_ms must be at least 1, got {result_ms}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        super().__init__("127.0.0.1")
        self.api_key = api_key
        self.result_ms = result_ms
        self.idle_timeout_s = idle_timeout_s
        self.record = record
        self.streams: list[SyntheticStream] = []
        self.refusals: list[Refusal] = []
        self._accepted: asyncio.Queue[SyntheticStream] = asyncio.Queue()
        self._connections: dict[SyntheticStream, ServerConnection] = {}

    async def __aenter__(self) -> Self:
        """Start serving on an ephemeral port of 127.0.0.1; ready when this returns."""
        if self._server is not None:
            raise RuntimeError(f"{type(self).__name__} is already started")
        await self._start_serving(self._handle)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every stream and stop serving; returns once all connection handlers ended."""
        await self._stop_serving()

    # `timeout` is part of the engine's public API; asyncio.timeout applies it inside.
    async def next_stream(self, timeout: float = 5.0) -> SyntheticStream:  # noqa: ASYNC109
        """Return the next accepted stream not yet returned; raise TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            return await self._accepted.get()

    # Hooks for a subclass that injects faults (fakes.deepgram.FakeDeepgram).

    def _forced_refusal(self) -> Refusal | None:
        """A refusal decided before reading the next upgrade request (`check_upgrade`'s
        `forced`); asked once per upgrade. None here: only the request decides."""
        return None

    def _deadline(self, stream: SyntheticStream) -> tuple[float, str]:
        """When `stream` must be closed with 1011 if nothing happens before, and the reason."""
        return idle_deadline(
            opened_at=stream.opened_at,
            last_activity=stream.last_activity,
            got_audio=stream.got_audio,
            idle_timeout_s=self.idle_timeout_s,
        )

    # Handshake.

    def _refusal(self, request: Request) -> Refusal | None:
        refusal = check_upgrade(
            request.path, request.headers, api_key=self.api_key, forced=self._forced_refusal()
        )
        if refusal is not None:
            self.refusals.append(refusal)
        return refusal

    # Streams.

    async def _handle(self, ws: ServerConnection) -> None:
        """Own one connection: its receiver task and its deadline watch, until it is closed."""
        assert ws.request is not None and ws.response is not None  # set by the handshake
        session = SyntheticSession.opened(
            ws.request,
            ws.response.headers[REQUEST_ID_HEADER],
            result_ms=self.result_ms,
            record=self.record,
        )
        stream = session.stream
        self.streams.append(stream)
        self._connections[stream] = ws
        self._accepted.put_nowait(stream)

        async def close_idle(reason: str) -> None:
            await self._close(ws, stream, CloseCode.INTERNAL_ERROR, reason)

        try:
            async with asyncio.TaskGroup() as tg:
                receiver = tg.create_task(self._receive(ws, session))
                await watch_deadline(receiver, lambda: self._deadline(stream), close_idle)
        finally:
            # A no-op when already closed; after a bug or a cancellation it closes the connection
            # here, so that `closed` always means `close_code` is final.
            await self._close(ws, stream, CloseCode.INTERNAL_ERROR, _HANDLER_ERROR_REASON)
            if stream.close_code is None:
                stream.close_code = ws.close_code
                stream.close_reason = ws.close_reason or ""
            stream.closed.set()
            self._connections.pop(stream, None)

    async def _receive(self, ws: ServerConnection, session: SyntheticSession) -> None:
        """Read and answer messages until the connection closes or the engine closes it."""
        try:
            while True:
                replies, close = session.receive(await ws.recv())
                for reply in replies:
                    await ws.send(session.render(reply))
                if close is not None:
                    await self._close(ws, session.stream, *close)
                    return
        except ConnectionClosed:
            return

    @staticmethod
    async def _close(ws: ServerConnection, stream: SyntheticStream, code: int, reason: str) -> None:
        """Close `ws`, recording `code` and `reason` on `stream` if this starts the close."""
        if ws.state is State.OPEN and stream.close_code is None:
            stream.close_code = code
            stream.close_reason = reason
        await ws.close(code, reason)
