"""The pure half of the Deepgram link: the listen URL, its headers, control messages, and
the reconnect policy (what is retryable, backoff, replay pace, the time shift)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from . import backoff, json_loads
from .config import Settings
from .exceptions import DeepgramClosed, DeepgramError, DeepgramNotConfigured, DeepgramRefused

# Control messages are JSON text frames. Never send an empty binary frame: it is the
# deprecated end-of-stream signal and makes Deepgram close unexpectedly.
KEEPALIVE = '{"type":"KeepAlive"}'
CLOSE_STREAM = '{"type":"CloseStream"}'


def listen_url(settings: Settings, channels: int) -> str:
    """The URL that opens a stream for `channels` of 8 kHz mu-law (1, or 2 interleaved).

    The audio format comes from the call; the user's options (defaults merged with
    DEEPGRAM_PARAMS) come after it."""
    audio = {"encoding": "mulaw", "sample_rate": "8000", "channels": str(channels)}
    if channels > 1:
        audio["multichannel"] = "true"
    return f"{settings.deepgram_url}?{urlencode(audio | settings.listen_params())}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """The upgrade's headers: `Authorization: Token <key>` when a key is configured."""
    if not settings.deepgram_api_key:
        return {}
    return {"Authorization": f"Token {settings.deepgram_api_key}"}


def token_url(deepgram_url: str) -> str:
    """The https:// (or http://) URL of Deepgram's "token details" request beside the listen
    endpoint `deepgram_url`: wss://api.deepgram.com/v1/listen gives
    https://api.deepgram.com/v1/auth/token. Any key that may stream may make it (Deepgram's
    docs give it as the test of a key: invalid credentials, or the key's details)."""
    parts = urlsplit(deepgram_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    path = parts.path.rstrip("/")
    prefix = path.removesuffix("/listen") if path.endswith("/listen") else "/v1"
    return f"{scheme}://{parts.netloc}{prefix}/auth/token"


# --- reconnecting -------------------------------------------------------------------------

# Refusals that a retry cannot fix: bad query, bad key, no credit, model not allowed.
FATAL_STATUSES = frozenset({400, 401, 402, 403, 404})
# 1008 is DATA-0000, audio Deepgram cannot decode: a new stream would get the same audio.
FATAL_CLOSE_CODES = frozenset({1008})
# Deepgram takes a backlog at about 1.25x real time; allow a short burst on top.
REPLAY_SPEED = 1.25
REPLAY_BURST_S = 2.0


def is_retryable(exc: DeepgramError) -> bool:
    """Whether a new stream may succeed where this one failed (drops, 429, 5xx: yes)."""
    if isinstance(exc, DeepgramRefused):
        return exc.status not in FATAL_STATUSES
    if isinstance(exc, DeepgramClosed):
        return exc.code not in FATAL_CLOSE_CODES
    return not isinstance(exc, DeepgramNotConfigured)


@dataclass(frozen=True, slots=True)
class Backoff:
    """Jittered exponential backoff with a budget: a live call cannot wait long, so delays
    start at a quarter second and stay within a few seconds (websockets' own reconnect
    starts at up to 5 s and grows to 90 s: far too slow for a call)."""

    max_attempts: int
    budget_s: float
    first_s: float = 0.25
    longest_s: float = 4.0

    def delay(self, attempt: int, jitter: float) -> float:
        """Seconds to wait before attempt `attempt` (1-based); `jitter` is uniform in [0, 1).
        Equal jitter (`backoff`): never zero, never above the ceiling."""
        return backoff.Backoff(self.first_s, self.longest_s).delay(attempt, jitter)

    def gives_up(self, attempt: int, outage_s: float) -> bool:
        """True when attempt `attempt` would exceed the attempts or the outage budget."""
        return attempt > self.max_attempts or outage_s >= self.budget_s


def replay_wait(sent_s: float, elapsed_s: float) -> float:
    """Seconds to wait before sending more, after `sent_s` of audio in `elapsed_s` on one
    stream, so a backlog goes out no faster than Deepgram accepts it."""
    return max(0.0, (sent_s - REPLAY_BURST_S) / REPLAY_SPEED - elapsed_s)


_TIME_FIELDS = ("start", "last_word_end", "timestamp")


def shift_times(message: str, offset_s: float) -> str:
    """Move a Deepgram message's times `offset_s` later (times restart at 0 on every new
    stream; subscribers see the call's one timeline). Messages without times, and text
    that is not a JSON object, pass unchanged. Sums are rounded to the microsecond to hide
    float noise (Deepgram's own times have millisecond precision)."""
    try:
        data = json.loads(message)
    except (ValueError, RecursionError):
        return message
    if not isinstance(data, dict):
        return message
    changed = _shift(data, _TIME_FIELDS, offset_s)
    channel = data.get("channel")
    alternatives = channel.get("alternatives") if isinstance(channel, dict) else None
    for alternative in alternatives if isinstance(alternatives, list) else ():
        words = alternative.get("words") if isinstance(alternative, dict) else None
        for word in words if isinstance(words, list) else ():
            if isinstance(word, dict):
                _shift(word, ("start", "end"), offset_s)
    return json.dumps(data) if changed else message


def _shift(obj: dict[str, Any], keys: tuple[str, ...], offset_s: float) -> bool:
    """Add `offset_s` to those of `keys` that hold numbers; whether any did."""
    shifted = False
    for key in keys:
        value = obj.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            obj[key] = round(value + offset_s, 6)
            shifted = True
    return shifted


def result_transcript(message: Mapping[str, Any]) -> str:
    """The transcript of a `Results` message (its first alternative), stripped; "" if it
    has none or is malformed."""
    try:
        text = message["channel"]["alternatives"][0]["transcript"]
    except (KeyError, IndexError, TypeError):
        return ""
    return text.strip() if isinstance(text, str) else ""


def is_final_with_text(message: Mapping[str, Any]) -> bool:
    """A final `Results` whose transcript is not empty: what a transcript is made of."""
    if message.get("type") != "Results" or message.get("is_final") is not True:
        return False
    return bool(result_transcript(message))


def request_id(message: Mapping[str, Any]) -> str:
    """The request id of a `Metadata` message, or in a `Results`' metadata; "" if none."""
    if message.get("type") == "Metadata":
        found = message.get("request_id")
    else:
        metadata = message.get("metadata")
        found = metadata.get("request_id") if isinstance(metadata, dict) else None
    return found if isinstance(found, str) else ""


# --- what a message is, once per message ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kind:
    """What the hub and its sinks need to know of one Deepgram message, found once
    (`classify`): whether it belongs in a call's history (a final `Results` with text or
    `speech_final`, or an `UtteranceEnd`: interim results are replaced by later ones and
    empty finals say nothing), whether it is a final with text (the transcript's), and the
    Deepgram request id it carries that the recorder keeps (a `Metadata`'s, or a final's)."""

    history: bool = False
    final_text: bool = False
    request_id: str = ""


#: Interim results (most messages with interim results on) and anything unparsable.
OTHER = Kind()
# Cheap filters before parsing: a final `Results`, an `UtteranceEnd`, a `Metadata`.
_MAYBE_FINAL = re.compile(r'"is_final"\s*:\s*true')


def classify(text: str) -> Kind:
    """What the Deepgram message `text` is (see `Kind`), with substring and one regex
    search first and at most one parse. Only a message that looks like a final can be
    one; only one that looks like a final or an `UtteranceEnd` enters the history; the
    recorder takes request ids from those that look like a final or a `Metadata`."""
    if _MAYBE_FINAL.search(text) is not None:
        may_history = may_record = True
    else:
        may_history = '"UtteranceEnd"' in text
        may_record = '"Metadata"' in text
        if not (may_history or may_record):
            return OTHER
    message = json_loads.object_or_none(text)
    if message is None:
        return OTHER
    kind = message.get("type")
    final = kind == "Results" and message.get("is_final") is True
    has_text = final and bool(result_transcript(message))
    history = may_history and (
        kind == "UtteranceEnd" or (final and (message.get("speech_final") is True or has_text))
    )
    if not may_record:
        return Kind(history) if history else OTHER
    return Kind(history, has_text, request_id(message))
