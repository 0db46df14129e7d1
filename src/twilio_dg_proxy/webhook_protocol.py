"""Webhooks on the wire (pure): the events, how they are signed and verified, and when a
failed delivery is tried again.

Signing follows Standard Webhooks 1.0 (standardwebhooks.com), so receivers may use its
libraries: headers `webhook-id` (the event's id, its idempotency key), `webhook-timestamp`
(Unix seconds of the attempt) and `webhook-signature` (`v1,` then the base64 HMAC-SHA256 of
`{id}.{timestamp}.{body}`). The key is WEBHOOK_SECRET's UTF-8 bytes, or, for a secret in the
specification's own form `whsec_<base64>`, the bytes it encodes.

No sockets, no clock: times and randomness are arguments. `webhooks.py` does the I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Literal

from .backoff import Backoff
from .exceptions import InvalidWebhook
from .transcripts import FinishedCall, Segment, segments, transcript_json
from .viewer_protocol import CallInfo

EventType = Literal["call.started", "call.ended", "transcript.final"]

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
SIGNATURE_VERSION = "v1"  # Standard Webhooks' identifier of HMAC-SHA256 signatures
SECRET_PREFIX = "whsec_"  # Standard Webhooks' form of a secret: the prefix, then base64
DEFAULT_TOLERANCE_S = 300.0  # the specification's 5 minutes, either way


# Events.


@dataclass(frozen=True, slots=True)
class Event:
    """One event, serialized once: every endpoint and every attempt sends these bytes."""

    id: str
    type: EventType
    call_sid: str
    body: bytes


def new_event_id() -> str:
    """A fresh idempotency key: `evt_` and 32 hex digits (no `.`, which the signed content
    uses as its separator)."""
    return f"evt_{uuid.uuid4().hex}"


def envelope(event_id: str, event_type: EventType, created_at_ms: int, data: object) -> bytes:
    """The body of every event: `{"id", "type", "createdAt", "data"}` as compact JSON."""
    document = {"id": event_id, "type": event_type, "createdAt": created_at_ms, "data": data}
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def call_started(info: CallInfo, *, event_id: str, now_ms: int) -> Event:
    """`call.started`: the call's info, as the viewer protocol shows it."""
    body = envelope(event_id, "call.started", now_ms, info.to_json())
    return Event(event_id, "call.started", info.call_sid, body)


def transcript_final(info: CallInfo, text: str, *, event_id: str, now_ms: int) -> Event:
    """`transcript.final`: one final result of the call (Deepgram's JSON `text`, decoded)
    and its line of the transcript (`segment`: speaker, text, start and end in seconds, as
    `call.ended` shows it; null if `text` is no final result with words)."""
    result = json.loads(text)
    # The same function as the whole transcript's, so a line reads the same in both events.
    found = segments(FinishedCall(info, 0, 0, "", finals=(text,)))
    data = {
        "callSid": info.call_sid,
        "segment": segment_json(found[0]) if found else None,
        "result": result,
    }
    body = envelope(event_id, "transcript.final", now_ms, data)
    return Event(event_id, "transcript.final", info.call_sid, body)


def call_ended(call: FinishedCall, *, event_id: str, now_ms: int) -> Event:
    """`call.ended`: the call's summary and whole transcript (`transcripts.transcript_json`)."""
    body = envelope(event_id, "call.ended", now_ms, transcript_json(call))
    return Event(event_id, "call.ended", call.info.call_sid, body)


def segment_json(segment: Segment) -> dict[str, Any]:
    """A `transcripts.Segment` as `transcript_json` writes it."""
    return {
        "start": round(segment.start, 3),
        "end": round(segment.end, 3),
        "channel": segment.channel,
        "speaker": segment.speaker,
        "text": segment.text,
    }


# Signatures.


def signing_key(secret: str) -> bytes:
    """The HMAC key of `secret`: the bytes a `whsec_<base64>` secret encodes, else its UTF-8
    bytes. Raises ValueError if a `whsec_` secret is not base64 or encodes nothing."""
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode()
    encoded = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a whsec_ secret must be base64 after its prefix") from None
    if not key:
        raise ValueError("a whsec_ secret must encode at least one byte")
    return key


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256>` of `{event_id}.{timestamp}.{body}`."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return f"{SIGNATURE_VERSION},{base64.b64encode(digest).decode()}"


def signed_headers(key: bytes, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The headers that sign `body` as sent at `timestamp` (Unix seconds)."""
    return {
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: signature(key, event_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> None:
    """Check a received webhook: `headers` (any case) carry a `v1` signature of `body` by
    `secret`, made within `tolerance_s` of `now` (Unix seconds) either way. Returns None;
    raises InvalidWebhook otherwise (a replay of an old request fails on its timestamp)."""
    lowered = {name.lower(): value for name, value in headers.items()}
    event_id = lowered.get(ID_HEADER, "")
    timestamp_text = lowered.get(TIMESTAMP_HEADER, "")
    signatures = lowered.get(SIGNATURE_HEADER, "")
    if not (event_id and timestamp_text and signatures):
        raise InvalidWebhook("missing webhook-id, webhook-timestamp or webhook-signature")
    if not timestamp_text.isascii() or not timestamp_text.isdigit():
        raise InvalidWebhook(f"webhook-timestamp is not Unix seconds: {timestamp_text[:40]!r}")
    timestamp = int(timestamp_text)
    if abs(now - timestamp) > tolerance_s:
        raise InvalidWebhook(f"webhook-timestamp is {now - timestamp:+.0f} s off: a replay?")
    try:
        key = signing_key(secret)
    except ValueError as exc:
        raise InvalidWebhook(f"unusable secret: {exc}") from None
    expected = signature(key, event_id, timestamp, body).encode()
    # Several signatures may be sent (a key rotation); any match will do. Compare them all in
    # constant time, so the time taken says nothing of how close a forgery came.
    matched = False
    for candidate in signatures.split():
        matched |= hmac.compare_digest(candidate.encode(), expected)
    if not matched:
        raise InvalidWebhook("no matching signature")


# Retries.


@dataclass(frozen=True, slots=True)
class Timing:
    """The waits of delivery: exponential backoff from `backoff_base_s` doubling up to
    `backoff_max_s` (full jitter: a random delay up to that bound); a `Retry-After` honoured
    up to `retry_after_max_s`; at shutdown, `flush_timeout_s` to deliver what is queued."""

    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    retry_after_max_s: float = 60.0
    flush_timeout_s: float = 10.0


DEFAULT_TIMING = Timing()


@dataclass(frozen=True, slots=True)
class Answered:
    """The endpoint answered with HTTP `status` (and this `Retry-After`, if any)."""

    status: int
    retry_after: str | None = None


@dataclass(frozen=True, slots=True)
class Unreachable:
    """No answer: a network error or a timeout, as `reason` says."""

    reason: str


Outcome = Answered | Unreachable


@dataclass(frozen=True, slots=True)
class Delivered:
    """A 2xx: the event is done."""


@dataclass(frozen=True, slots=True)
class RetryIn:
    """Try again after `delay_s`; `problem` says what went wrong."""

    delay_s: float
    problem: str


@dataclass(frozen=True, slots=True)
class GiveUp:
    """The event will not be delivered: a permanent failure, or the attempts ran out."""

    problem: str


Step = Delivered | RetryIn | GiveUp


def describe(outcome: Outcome) -> str:
    """What went wrong, for logs: `HTTP 503` or the network error's reason."""
    return f"HTTP {outcome.status}" if isinstance(outcome, Answered) else outcome.reason


def is_retryable(outcome: Outcome) -> bool:
    """Network errors, timeouts, 5xx and 429 may pass; any other answer will not change
    (3xx too: redirects are not followed, the URL should be updated instead)."""
    if isinstance(outcome, Unreachable):
        return True
    return outcome.status == 429 or 500 <= outcome.status <= 599


def backoff_s(attempt: int, timing: Timing, random: Callable[[], float]) -> float:
    """Full jitter: a uniform delay up to `backoff_base_s * 2**(attempt - 1)`, capped at
    `backoff_max_s` (`random()` is in [0, 1))."""
    return Backoff(timing.backoff_base_s, timing.backoff_max_s, "full").delay(attempt, random())


def retry_after_s(value: str | None, now: float) -> float | None:
    """A `Retry-After` header in seconds from `now` (Unix seconds): delay-seconds or an
    HTTP-date; None if absent or unreadable. Never negative."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP-date is GMT; a zone-less one is read as such
        return None
    seconds = when.timestamp() - now
    return max(0.0, seconds) if math.isfinite(seconds) else None


def next_step(
    outcome: Outcome,
    attempt: int,
    attempts: int,
    timing: Timing,
    now: float,
    random: Callable[[], float],
) -> Step:
    """What follows attempt number `attempt` (from 1) of at most `attempts`, given its
    `outcome`: done on a 2xx; give up on a permanent failure or the last attempt; else wait
    the `Retry-After` (within `retry_after_max_s`) or the jittered backoff."""
    if isinstance(outcome, Answered) and 200 <= outcome.status <= 299:
        return Delivered()
    problem = describe(outcome)
    if not is_retryable(outcome):
        return GiveUp(f"{problem}, not retried")
    if attempt >= attempts:
        return GiveUp(f"{problem} after {attempts} attempt(s)")
    asked = retry_after_s(outcome.retry_after, now) if isinstance(outcome, Answered) else None
    if asked is not None:
        return RetryIn(min(asked, timing.retry_after_max_s), problem)
    return RetryIn(backoff_s(attempt, timing, random), problem)
