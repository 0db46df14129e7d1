"""The server side of Deepgram's live-transcription protocol (pure): what a Deepgram-compatible
server checks at the upgrade, which messages it reads, and the messages it sends.

`deepgram_protocol` is the client side (what the proxy sends); this module is what the
project's own servers speak, the offline engine (`engine.server`) and the synthetic engine
(`engine.synthetic`, and the fake Deepgram built on it), so they cannot drift apart. It follows
Deepgram's documented behaviour (streaming API reference; "Audio Keep Alive", "Finalize",
"Close Stream"; the DATA/NET error codes; summarised in PROTOCOLS.md):

- the upgrade: `check_upgrade` gives a `Refusal` (404, 401, 400) whose body and headers
  (`refusal_body`, `refusal_headers`: ``dg-error``, ``dg-request-id``) are Deepgram's;
- the query: `parse_query`, and `query_problem` for the only audio this project sends
  (8 kHz mu-law, mono or interleaved stereo);
- client messages: audio in binary frames, controls recognised by `control_type`
  (`finalize_channel` for Finalize's optional channel); an empty binary frame and any other
  text end the stream (`EMPTY_FRAME_REASON`, `DATA_REASON`);
- server messages: `results_message` (with `words_for`), `metadata_message`,
  `speech_started_message`, `utterance_end_message`, `iso_timestamp` for their dates;
- the NET-0001 idle rule: `idle_deadline`.

No sockets and no clock: times are arguments.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any, Final, Literal, TypeAlias
from urllib.parse import parse_qsl, urlsplit

from websockets.datastructures import Headers

__all__ = [
    "DATA_REASON",
    "DEFAULT_MODEL_INFO",
    "DEFAULT_MODEL_UUID",
    "DEFAULT_WORD_CONFIDENCE",
    "EMPTY_FRAME_REASON",
    "IDLE_REASON",
    "LISTEN_PATH",
    "NEVER_FED_REASON",
    "REQUEST_ID_HEADER",
    "SAMPLE_RATE",
    "Control",
    "JSONDict",
    "Refusal",
    "check_upgrade",
    "control_type",
    "finalize_channel",
    "idle_deadline",
    "metadata_message",
    "parse_query",
    "query_problem",
    "refusal_body",
    "refusal_headers",
    "results_message",
    "speech_started_message",
    "iso_timestamp",
    "utterance_end_message",
    "words_for",
]

JSONDict: TypeAlias = dict[str, Any]
Control: TypeAlias = Literal["KeepAlive", "Finalize", "CloseStream"]

LISTEN_PATH: Final = "/v1/listen"
"""Deepgram's live-transcription path, the only one a server accepts."""
REQUEST_ID_HEADER: Final = "dg-request-id"
"""The header naming the request on every upgrade response, 101 and refusals alike."""
SAMPLE_RATE: Final = 8000
"""Sample frames per second of the only audio the servers accept (Twilio's mu-law)."""

DEFAULT_MODEL_UUID: Final = "00000000-0000-4000-8000-000000000000"
"""The model named in messages whose builder is given none (the synthetic engine's)."""
DEFAULT_MODEL_INFO: Final[Mapping[str, str]] = {"name": "fake", "version": "0", "arch": "fake"}
"""The model information paired with `DEFAULT_MODEL_UUID`."""
DEFAULT_WORD_CONFIDENCE: Final = 0.99
"""The confidence of words and transcripts whose builder is given none."""

# Close reasons, Deepgram-style: the error code first so a client can match on the prefix.
# RFC 6455 limits a reason to 123 bytes.
IDLE_REASON: Final = "NET-0001: no audio or KeepAlive received within the timeout window"
NEVER_FED_REASON: Final = (
    "NET-0001: no audio received within the timeout window (KeepAlive alone does not count)"
)
DATA_REASON: Final = "DATA-0000: expected audio or a KeepAlive, Finalize or CloseStream message"
"""Why a stream is closed with 1008 after a text message that is not a control message."""
EMPTY_FRAME_REASON: Final = "empty binary frame"
"""Why a stream is closed with 1011 after an empty binary frame (the deprecated end signal)."""


# --- The upgrade ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why an upgrade was refused: the HTTP status and Deepgram's error code and message."""

    status: int
    err_code: str
    message: str


def parse_query(path: str) -> dict[str, str]:
    """Return the query of a request path as a dict (the last value of a repeated key wins)."""
    return dict(parse_qsl(urlsplit(path).query, keep_blank_values=True))


def query_problem(params: Mapping[str, str]) -> str | None:
    """Return why a server refuses this query, or None when it accepts it.

    Accepted: only this project's audio, ``encoding=mulaw``, ``sample_rate=8000``, ``channels``
    given explicitly as 1 or 2, and ``multichannel=true`` with 2 channels. Stricter than
    Deepgram (which defaults ``channels`` to 1) so a proxy that forgets the parameter is caught.
    Other parameters are accepted as they are.
    """
    if params.get("encoding") != "mulaw":
        return "encoding must be mulaw"
    if params.get("sample_rate") != str(SAMPLE_RATE):
        return f"sample_rate must be {SAMPLE_RATE}"
    channels = params.get("channels")
    if channels not in ("1", "2"):
        return "channels must be 1 or 2"
    if channels == "2" and params.get("multichannel") != "true":
        return "multichannel=true is required with channels=2"
    return None


def check_upgrade(
    path: str, headers: Headers, *, api_key: str | None, forced: Refusal | None = None
) -> Refusal | None:
    """Return why a server refuses this WebSocket upgrade, or None to accept it.

    Checks, in order: the path is `LISTEN_PATH` (404); `forced` is None (a refusal the server
    decided on before reading the request, such as Deepgram's 429 at its concurrency limit, is
    returned as it is); the ``Authorization`` header is exactly ``Token <api_key>`` when
    `api_key` is set (401); the query passes `query_problem` (400).
    """
    if urlsplit(path).path != LISTEN_PATH:
        return Refusal(HTTPStatus.NOT_FOUND, "NOT_FOUND", f"Not Found: only {LISTEN_PATH} exists")
    if forced is not None:
        return forced
    refused = check_key(headers, api_key=api_key)
    if refused is not None:
        return refused
    problem = query_problem(parse_query(path))
    if problem is not None:
        return Refusal(HTTPStatus.BAD_REQUEST, "Bad Request", f"Bad Request: {problem}")
    return None


AUTH_TOKEN_PATH: Final = "/v1/auth/token"
"""Deepgram's "token details" request: the cheapest authenticated request (the proxy's
start-up check of a key). 401 for invalid credentials, else details of the key."""


def check_key(headers: Headers, *, api_key: str | None) -> Refusal | None:
    """Return why a request with these headers is refused for its key (401), or None: the
    ``Authorization`` header is exactly ``Token <api_key>`` when `api_key` is set."""
    if api_key is not None and headers.get("Authorization") != f"Token {api_key}":
        return Refusal(HTTPStatus.UNAUTHORIZED, "INVALID_AUTH", "Invalid credentials.")
    return None


def token_details_body(*, request_id: str) -> str:
    """The JSON body of a successful `AUTH_TOKEN_PATH` answer: a few of the fields Deepgram
    gives about a key (a local server has no account: placeholder values)."""
    return json.dumps({"api_key_id": "local", "scopes": ["usage:write"], "request_id": request_id})


def refusal_body(refusal: Refusal, *, request_id: str) -> str:
    """Return the JSON body of Deepgram's answer to a refused upgrade."""
    return json.dumps(
        {"err_code": refusal.err_code, "err_msg": refusal.message, "request_id": request_id}
    )


def refusal_headers(refusal: Refusal, *, request_id: str) -> dict[str, str]:
    """Return the headers Deepgram sets on a refused upgrade: a JSON content type, ``dg-error``
    (repeating the body's message) and ``dg-request-id``."""
    return {
        "Content-Type": "application/json",
        "dg-error": refusal.message,
        REQUEST_ID_HEADER: request_id,
    }


# --- Client messages -----------------------------------------------------------------------


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


def finalize_channel(text: str) -> int | None:
    """Return the ``channel`` of a Finalize message (`text`, a JSON object), or None when it
    names none: then every channel is finalized."""
    channel = json.loads(text).get("channel")
    return channel if isinstance(channel, int) and not isinstance(channel, bool) else None


def idle_deadline(
    *, opened_at: float, last_activity: float, got_audio: bool, idle_timeout_s: float
) -> tuple[float, str]:
    """Return when a stream must be closed with 1011 if nothing happens before, and the reason.

    Deepgram's NET-0001 rule. Times are on one monotonic clock. The deadline runs from the last
    audio or control message, but from the opening while no audio has arrived (KeepAlive alone
    does not hold a connection that never received audio).
    """
    if got_audio:
        return last_activity + idle_timeout_s, IDLE_REASON
    return opened_at + idle_timeout_s, NEVER_FED_REASON


# --- Server messages -----------------------------------------------------------------------


def iso_timestamp(moment: datetime) -> str:
    """Return `moment` as Deepgram dates its messages: ISO 8601 in UTC with a ``Z``."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def words_for(transcript: str, *, start: float, duration: float) -> list[JSONDict]:
    """Split `transcript` into Deepgram word objects sharing [start, start + duration] evenly."""
    words = transcript.split()
    step = duration / len(words) if words else 0.0
    return [
        {
            "word": word,
            "start": start + i * step,
            "end": start + (i + 1) * step,
            "confidence": DEFAULT_WORD_CONFIDENCE,
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
    model_uuid: str = DEFAULT_MODEL_UUID,
    model_info: Mapping[str, str] = DEFAULT_MODEL_INFO,
) -> JSONDict:
    """Return a Deepgram ``Results`` message for one channel, with Deepgram's field names.

    `start` and `duration` are seconds on the connection's audio timeline. `words` (Deepgram
    word objects) defaults to `words_for` the transcript, `confidence` to
    `DEFAULT_WORD_CONFIDENCE` (0 for an empty transcript). `model_uuid` and `model_info` name
    the model in ``metadata``.
    """
    if words is None:
        words = words_for(transcript, start=start, duration=duration)
    if confidence is None:
        confidence = DEFAULT_WORD_CONFIDENCE if transcript else 0.0
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
    model_uuid: str = DEFAULT_MODEL_UUID,
    model_info: Mapping[str, str] = DEFAULT_MODEL_INFO,
) -> JSONDict:
    """Return the ``Metadata`` message Deepgram sends after ``CloseStream``, before closing.

    `created` is an `iso_timestamp`, `duration` the seconds of audio received, `sha256` the hex
    digest of all of it; `model_uuid` and `model_info` name the model.
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


def speech_started_message(*, channel: int, channels: int, timestamp: float) -> JSONDict:
    """Deepgram's ``SpeechStarted`` (sent with ``vad_events=true``); `timestamp` in seconds."""
    return {"type": "SpeechStarted", "channel": [channel, channels], "timestamp": timestamp}


def utterance_end_message(*, channel: int, channels: int, last_word_end: float) -> JSONDict:
    """Deepgram's ``UtteranceEnd`` (sent with ``utterance_end_ms``)."""
    return {"type": "UtteranceEnd", "channel": [channel, channels], "last_word_end": last_word_end}
