"""A fake Deepgram live-transcription server speaking Deepgram's documented live protocol.

`FakeDeepgram` serves ``ws://127.0.0.1:<port>/v1/listen`` on an ephemeral port. It checks the
upgrade like Deepgram (path, ``Authorization: Token <key>``, the mu-law query) and refuses with
Deepgram's ``dg-error`` and ``dg-request-id`` headers; it answers interleaved mu-law audio with
deterministic ``Results`` that reveal which audio arrived on which channel; it honours
``KeepAlive``, ``Finalize`` and ``CloseStream``; it applies Deepgram's NET-0001 idle rule; and it
has fault knobs (refuse every upgrade, drop each stream after a while). Every stream records
what it received and sent in a `FakeStream` so tests can assert on the wire.

The pure half (`FakeTranscriber`, `results_message`, `check_upgrade`, `next_deadline`, ...) is
usable without sockets; `FakeDeepgram` wraps it with websockets' asyncio server.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Any, Final, Literal, Self, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from ..listening import LISTEN_PATH, Listening

__all__ = [
    "LISTEN_PATH",
    "MODEL_INFO",
    "MODEL_UUID",
    "MULAW_SILENCE",
    "SAMPLE_RATE",
    "DATA_REASON",
    "EMPTY_FRAME_REASON",
    "Control",
    "FakeDeepgram",
    "FakeStream",
    "FakeTranscriber",
    "Refusal",
    "audio_digest",
    "check_upgrade",
    "control_type",
    "is_silence",
    "metadata_message",
    "next_deadline",
    "parse_query",
    "query_problem",
    "refusal_response",
    "results_message",
    "transcript_for",
    "words_for",
]

JSONDict: TypeAlias = dict[str, Any]
Control: TypeAlias = Literal["KeepAlive", "Finalize", "CloseStream"]

SAMPLE_RATE: Final = 8000
"""Sample frames per second of the only audio the fake accepts (Twilio's mu-law)."""
_SAMPLES_PER_MS: Final = SAMPLE_RATE // 1000
MULAW_SILENCE: Final = 0xFF
"""The mu-law byte for a zero sample; a channel window made only of it transcribes to ""."""
MODEL_UUID: Final = "00000000-0000-4000-8000-000000000000"
MODEL_INFO: Final[dict[str, str]] = {"name": "fake", "version": "0", "arch": "fake"}
_WORD_CONFIDENCE: Final = 0.99

# Close reasons, Deepgram-style: the error code first so a client can match on the prefix.
# RFC 6455 limits a reason to 123 bytes.
_IDLE_REASON: Final = "NET-0001: no audio or KeepAlive received within the timeout window"
_NEVER_FED_REASON: Final = (
    "NET-0001: no audio received within the timeout window (KeepAlive alone does not count)"
)
_DROP_REASON: Final = "NET-0000 fake drop"
DATA_REASON: Final = "DATA-0000: expected audio or a KeepAlive, Finalize or CloseStream message"
EMPTY_FRAME_REASON: Final = "empty binary frame"
_HANDLER_ERROR_REASON: Final = "fake deepgram internal error"


# --- Pure helpers --------------------------------------------------------------------------


def audio_digest(audio: bytes) -> str:
    """Return eight hex digits identifying `audio` (BLAKE2s), as used in fake transcripts."""
    return hashlib.blake2s(audio, digest_size=4).hexdigest()


def is_silence(audio: bytes) -> bool:
    """Return whether `audio` (one channel's mu-law bytes) is all `MULAW_SILENCE`."""
    # bytes.count runs in C: no per-byte Python loop on the hot path.
    return audio.count(MULAW_SILENCE) == len(audio)


def transcript_for(channel_audio: bytes, *, channel: int, window: int) -> str:
    """Return the fake transcript of one channel's window of mu-law audio.

    ``""`` when the audio is silence, else ``"ch<channel> w<window> <audio_digest>"``: a test
    knows from the text which channel and window it covers and which bytes were in it.
    """
    if is_silence(channel_audio):
        return ""
    return f"ch{channel} w{window} {audio_digest(channel_audio)}"


def words_for(transcript: str, *, start: float, duration: float) -> list[JSONDict]:
    """Split `transcript` into Deepgram word objects sharing [start, start + duration] evenly."""
    words = transcript.split()
    step = duration / len(words) if words else 0.0
    return [
        {
            "word": word,
            "start": start + i * step,
            "end": start + (i + 1) * step,
            "confidence": _WORD_CONFIDENCE,
            # Without smart formatting Deepgram's punctuated_word only adds sentence punctuation.
            "punctuated_word": word + "." if i == len(words) - 1 else word,
        }
        for i, word in enumerate(words)
    ]


def results_message(
    *,
    transcript: str,
    channel: int,
    channels: int,
    start: float,
    duration: float,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
    request_id: str,
    words: list[JSONDict] | None = None,
    confidence: float | None = None,
    model_uuid: str = MODEL_UUID,
    model_info: Mapping[str, str] = MODEL_INFO,
) -> JSONDict:
    """Return a Deepgram ``Results`` message for one channel, with Deepgram's field names.

    `start` and `duration` are seconds on the connection's audio timeline. `words` (Deepgram
    word objects) and `confidence` default to the fake's: `words_for` and a fixed confidence
    (0 for an empty transcript). `model_uuid` and `model_info` name the model in ``metadata``.
    The fake's I/O layer adds the ``fake`` field (send time and sequence number) just before
    sending.
    """
    if words is None:
        words = words_for(transcript, start=start, duration=duration)
    if confidence is None:
        confidence = _WORD_CONFIDENCE if transcript else 0.0
    return {
        "type": "Results",
        "channel_index": [channel, channels],
        "duration": duration,
        "start": start,
        "is_final": is_final,
        "speech_final": speech_final,
        "from_finalize": from_finalize,
        "channel": {
            "alternatives": [
                {
                    "transcript": transcript,
                    "confidence": confidence,
                    "words": words,
                }
            ]
        },
        "metadata": {
            "request_id": request_id,
            "model_info": dict(model_info),
            "model_uuid": model_uuid,
        },
    }


def metadata_message(
    *,
    request_id: str,
    created: str,
    duration: float,
    channels: int,
    sha256: str,
    model_uuid: str = MODEL_UUID,
    model_info: Mapping[str, str] = MODEL_INFO,
) -> JSONDict:
    """Return the ``Metadata`` message Deepgram sends after ``CloseStream``, before closing.

    `duration` is the seconds of audio received, `sha256` the hex digest of all of it;
    `model_uuid` and `model_info` name the model (the fake's by default).
    """
    return {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": request_id,
        "sha256": sha256,
        "created": created,
        "duration": duration,
        "channels": channels,
        "models": [model_uuid],
        "model_info": {model_uuid: dict(model_info)},
    }


def control_type(text: str) -> Control | None:
    """Return the ``type`` of a control message, or None when `text` is not one.

    Accepts any JSON object whose ``type`` is KeepAlive, Finalize or CloseStream (extra fields,
    such as Finalize's ``channel``, are allowed and ignored).
    """
    try:
        message = json.loads(text)
    except ValueError:
        return None
    if not isinstance(message, dict):
        return None
    match message.get("type"):
        case "KeepAlive":
            return "KeepAlive"
        case "Finalize":
            return "Finalize"
        case "CloseStream":
            return "CloseStream"
        case _:
            return None


def parse_query(path: str) -> dict[str, str]:
    """Return the query of a request path as a dict (the last value of a repeated key wins)."""
    return dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))


def query_problem(params: dict[str, str]) -> str | None:
    """Return why the fake refuses this query, or None when it accepts it.

    The fake accepts only this project's audio: ``encoding=mulaw``, ``sample_rate=8000``,
    ``channels`` given explicitly as 1 or 2, and ``multichannel=true`` with 2 channels. It is
    stricter than Deepgram (which defaults ``channels`` to 1) so a proxy that forgets the
    parameter is caught. Other parameters are accepted as they are.
    """
    if params.get("encoding") != "mulaw":
        return "encoding must be mulaw"
    if params.get("sample_rate") != "8000":
        return "sample_rate must be 8000"
    channels = params.get("channels")
    if channels not in ("1", "2"):
        return "channels must be 1 or 2"
    if channels == "2" and params.get("multichannel") != "true":
        return "multichannel=true is required with channels=2"
    return None


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade was refused: the HTTP status and Deepgram's error code and message."""

    status: int
    err_code: str
    message: str


def check_upgrade(
    path: str, headers: Headers, *, api_key: str | None, reject_status: int | None
) -> Refusal | None:
    """Return why the fake refuses this WebSocket upgrade, or None to accept it.

    Checks, in order: the path is `LISTEN_PATH` (404); `reject_status` is unset; the
    ``Authorization`` header is exactly ``Token <api_key>`` when `api_key` is set (401); the
    query passes `query_problem` (400).
    """
    if urlsplit(path).path != LISTEN_PATH:
        return Refusal(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"Not Found: only {LISTEN_PATH} exists")
    if reject_status is not None:
        phrase = HTTPStatus(reject_status).phrase
        return Refusal(reject_status, phrase, f"{phrase}: refused by the fake's reject_status")
    if api_key is not None and headers.get("Authorization") != f"Token {api_key}":
        return Refusal(HTTPStatus.UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.")
    problem = query_problem(parse_query(path))
    if problem is not None:
        return Refusal(HTTPStatus.BAD_REQUEST, "Bad Request", f"Bad Request: {problem}")
    return None


def refusal_response(connection: ServerConnection, refusal: Refusal) -> Response:
    """Return Deepgram's answer to a refused upgrade: `refusal.status` with a JSON body, and
    the ``dg-error`` and ``dg-request-id`` headers (a fresh request id)."""
    request_id = str(uuid.uuid4())
    # Deepgram's body is JSON and dg-error repeats its message.
    body = {"err_code": refusal.err_code, "err_msg": refusal.message, "request_id": request_id}
    response = connection.respond(refusal.status, json.dumps(body))
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    response.headers["dg-error"] = refusal.message
    response.headers["dg-request-id"] = request_id
    return response


def next_deadline(
    *,
    opened_at: float,
    last_activity: float,
    got_audio: bool,
    idle_timeout_s: float,
    drop_after_s: float | None,
) -> tuple[float, str]:
    """Return when a stream must be closed with 1011 if nothing happens before, and the reason.

    Times are on one monotonic clock. The idle deadline runs from the last audio or control
    message, but from the opening while no audio has arrived (Deepgram: KeepAlive alone does not
    hold a connection that never received audio). `drop_after_s` is the fault knob.
    """
    if got_audio:
        deadline, reason = last_activity + idle_timeout_s, _IDLE_REASON
    else:
        deadline, reason = opened_at + idle_timeout_s, _NEVER_FED_REASON
    if drop_after_s is not None and opened_at + drop_after_s <= deadline:
        return opened_at + drop_after_s, _DROP_REASON
    return deadline, reason


class FakeTranscriber:
    """The sans-I/O core of a fake stream: audio and controls in, Deepgram message dicts out.

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


class FakeStream:
    """What one accepted connection received and sent; filled in by the fake as it runs.

    Attributes: `request_id` (also the ``dg-request-id`` of the 101 response), `path`, `params`
    (the query), `headers` (of the upgrade request), `channels`, `audio` (every audio byte as
    received, interleaved; left empty when the fake was made with ``record=False``),
    `audio_bytes` (count of audio bytes), `audio_log` ((time.monotonic() at receipt, total audio
    bytes so far) per binary message), `controls` (the ``type`` of each control message, in
    order), `invalid_texts` (text messages that were not control messages), `sent` (every JSON
    text sent, in order; empty with ``record=False``), `sent_count`, `empty_frames`,
    `close_code` and `close_reason` (the fake's own when it closed first, else the peer's;
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

    @property
    def audio_seconds(self) -> float:
        """Seconds of audio received (whole sample frames)."""
        return self.audio_bytes // self.channels / SAMPLE_RATE

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


class FakeDeepgram(Listening):
    """A fake Deepgram live endpoint on 127.0.0.1, started and closed as an async context manager.

    Knobs: `api_key` (require ``Authorization: Token <api_key>``, else 401), `result_ms` (one
    final per channel per `result_ms` of audio), `idle_timeout_s` (the NET-0001 rule),
    `reject_status` (refuse every upgrade with this HTTP status), `drop_after_s` (close each
    stream with 1011 NET-0000 this long after it opened), `record` (keep audio bytes and sent
    texts; turn off in long benchmarks to bound memory).

    `streams` lists accepted connections in order; `refusals` lists refused upgrades in order.
    Closing the fake closes every stream (1001, by websockets' server).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        result_ms: int = 250,
        idle_timeout_s: float = 10.0,
        reject_status: int | None = None,
        drop_after_s: float | None = None,
        record: bool = True,
    ) -> None:
        if result_ms < 1:
            raise ValueError(f"result_ms must be at least 1, got {result_ms}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        if drop_after_s is not None and drop_after_s < 0:
            raise ValueError(f"drop_after_s must not be negative, got {drop_after_s}")
        if reject_status is not None and not 400 <= HTTPStatus(reject_status) <= 599:
            raise ValueError(f"reject_status must be a 4xx or 5xx status, got {reject_status}")
        super().__init__("127.0.0.1")
        self.api_key = api_key
        self.result_ms = result_ms
        self.idle_timeout_s = idle_timeout_s
        self.reject_status = reject_status
        self.drop_after_s = drop_after_s
        self.record = record
        self.streams: list[FakeStream] = []
        self.refusals: list[Refusal] = []
        self._accepted: asyncio.Queue[FakeStream] = asyncio.Queue()
        self._refuse_next: list[int] = []
        self._connections: dict[FakeStream, ServerConnection] = {}

    async def __aenter__(self) -> Self:
        """Start serving on an ephemeral port of 127.0.0.1; ready when this returns."""
        if self._server is not None:
            raise RuntimeError("FakeDeepgram is already started")
        self._server = await serve(
            self._handle,
            self.host,
            0,
            process_request=self._process_request,
            process_response=self._process_response,
            # Compressing every JSON message would make the fake, not the proxy, the benchmark's
            # bottleneck.
            compression=None,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close every stream and stop serving; returns once all connection handlers ended."""
        await self._stop_serving()

    # `timeout` is part of the fake's public API; asyncio.timeout applies it inside.
    async def next_stream(self, timeout: float = 5.0) -> FakeStream:  # noqa: ASYNC109
        """Return the next accepted stream not yet returned; raise TimeoutError after `timeout`."""
        async with asyncio.timeout(timeout):
            return await self._accepted.get()

    # Faults on demand.

    def refuse_next(self, *statuses: int) -> None:
        """Refuse the next upgrades with these HTTP statuses, in order (then as configured)."""
        self._refuse_next.extend(statuses)

    async def drop(
        self,
        stream: FakeStream,
        code: int = CloseCode.INTERNAL_ERROR,
        reason: str = "NET-0000 fake drop",
    ) -> None:
        """Close `stream` from Deepgram's side, as Deepgram does on an internal error."""
        ws = self._connections.get(stream)
        if ws is not None:
            await self._close(ws, stream, code, reason)

    def cut(self, stream: FakeStream) -> None:
        """Drop `stream`'s TCP connection without a close frame, like a network failure."""
        ws = self._connections.get(stream)
        if ws is not None:
            ws.transport.abort()

    def stall(self, stream: FakeStream) -> None:
        """Stop reading `stream` (no results, no pongs): a hung server or a black hole."""
        ws = self._connections.get(stream)
        if ws is not None:
            ws.transport.pause_reading()

    # Handshake.

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        refusal = check_upgrade(
            request.path,
            request.headers,
            api_key=self.api_key,
            reject_status=self._refuse_next.pop(0) if self._refuse_next else self.reject_status,
        )
        if refusal is None:
            return None
        self.refusals.append(refusal)
        return refusal_response(connection, refusal)

    def _process_response(
        self, connection: ServerConnection, request: Request, response: Response
    ) -> None:
        # Deepgram sends dg-request-id on every upgrade response, 101 included; refusals have one.
        if "dg-request-id" not in response.headers:
            response.headers["dg-request-id"] = str(uuid.uuid4())

    # Streams.

    async def _handle(self, ws: ServerConnection) -> None:
        """Own one connection: its receiver task and its deadline watch, until it is closed."""
        assert ws.request is not None and ws.response is not None  # set by the handshake
        params = parse_query(ws.request.path)
        request_id = ws.response.headers["dg-request-id"]
        stream = FakeStream(
            request_id=request_id,
            path=ws.request.path,
            params=params,
            headers=ws.request.headers,
            channels=int(params["channels"]),  # validated in _process_request
            record=self.record,
        )
        transcriber = FakeTranscriber(
            channels=stream.channels,
            result_ms=self.result_ms,
            interim_results=params.get("interim_results") == "true",
            request_id=request_id,
        )
        self.streams.append(stream)
        self._connections[stream] = ws
        self._accepted.put_nowait(stream)
        try:
            async with asyncio.TaskGroup() as tg:
                receiver = tg.create_task(self._receive(ws, stream, transcriber))
                await self._watch(ws, stream, receiver)
        finally:
            # A no-op when already closed; after a bug or a cancellation it closes the connection
            # here, so that `closed` always means `close_code` is final.
            await self._close(ws, stream, CloseCode.INTERNAL_ERROR, _HANDLER_ERROR_REASON)
            if stream.close_code is None:
                stream.close_code = ws.close_code
                stream.close_reason = ws.close_reason or ""
            stream.closed.set()
            self._connections.pop(stream, None)

    async def _watch(
        self, ws: ServerConnection, stream: FakeStream, receiver: asyncio.Task[None]
    ) -> None:
        """Return when `receiver` ends, closing the stream with 1011 if a deadline passes first.

        One wake-up per deadline rather than a timer per message: audio and controls only move
        `stream.last_activity`, and the deadline is recomputed when the wait expires.
        """
        while True:
            deadline, reason = next_deadline(
                opened_at=stream.opened_at,
                last_activity=stream.last_activity,
                got_audio=stream.got_audio,
                idle_timeout_s=self.idle_timeout_s,
                drop_after_s=self.drop_after_s,
            )
            delay = deadline - time.monotonic()
            if delay <= 0:
                await self._close(ws, stream, CloseCode.INTERNAL_ERROR, reason)
                return
            done, _ = await asyncio.wait({receiver}, timeout=delay)
            if done:
                return

    async def _receive(
        self, ws: ServerConnection, stream: FakeStream, transcriber: FakeTranscriber
    ) -> None:
        """Read and answer messages until the connection closes or the fake closes it."""
        try:
            while True:
                message = await ws.recv()
                if isinstance(message, bytes):
                    if not message:
                        # The deprecated end-of-stream signal: record it so tests can assert
                        # that the proxy never sends one.
                        stream.empty_frames += 1
                        await self._close(ws, stream, CloseCode.INTERNAL_ERROR, EMPTY_FRAME_REASON)
                        return
                    stream._note_audio(message)
                    for result in transcriber.feed(message):
                        await self._send(ws, stream, result)
                    continue
                kind = control_type(message)
                if kind is None:
                    stream.invalid_texts.append(message)
                    await self._close(ws, stream, CloseCode.POLICY_VIOLATION, DATA_REASON)
                    return
                stream.controls.append(kind)
                # Deepgram words NET-0001 as no "audio data or a text message": any control counts.
                stream.last_activity = time.monotonic()
                if kind == "Finalize":
                    for result in transcriber.finalize():
                        await self._send(ws, stream, result)
                elif kind == "CloseStream":
                    created = datetime.now(UTC).isoformat().replace("+00:00", "Z")
                    for result in transcriber.close_stream(created=created):
                        await self._send(ws, stream, result)
                    await self._close(ws, stream, CloseCode.NORMAL_CLOSURE, "")
                    return
        except ConnectionClosed:
            return

    async def _send(self, ws: ServerConnection, stream: FakeStream, message: JSONDict) -> None:
        if message["type"] == "Results":
            # Stamped as late as possible so a benchmark measures the proxy's fan-out latency.
            message["fake"] = {"sent_at": time.monotonic(), "seq": stream.sent_count}
        text = json.dumps(message)
        stream._note_sent(text)
        await ws.send(text)

    @staticmethod
    async def _close(ws: ServerConnection, stream: FakeStream, code: int, reason: str) -> None:
        """Close `ws`, recording `code` and `reason` on `stream` if this starts the close."""
        if ws.state is State.OPEN and stream.close_code is None:
            stream.close_code = code
            stream.close_reason = reason
        await ws.close(code, reason)
