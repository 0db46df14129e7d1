"""The /calls API (pure): what a request asks for, and the bodies of its answers.

- `GET /calls?limit=&before=&<Name>=<value>…` → `{"calls": [summary…], "next": cursor|null}`,
  newest first; every query key but `token`, `limit` and `before` filters by that custom
  parameter (all must match).
- `GET /calls/{callSid}` → the call's summary.
- `GET /calls/{callSid}/transcript?format=json|txt|vtt|srt&download=1` → the transcript
  (`vtt` and `srt` are the captions of `captions`).

The cursor is opaque to clients: URL-safe base64 of `[endedAt, callSid]`, the last call of
the page, so that calls ending meanwhile never shift a page (the listing is keyed on the
pair, not on an offset).
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote, urlsplit

from .captions import srt, webvtt
from .exceptions import BadCallsRequest
from .store.base import CallPage, CallQuery, Cursor
from .transcripts import FinishedCall, transcript_json, transcript_text

CALLS_PATH = "/calls"
DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_FILTERS = 8  # parameters one listing may filter by (each is a join)
RESERVED = frozenset({"token", "limit", "before"})  # query keys that are not filters
_YES = frozenset({"1", "true", "yes", "on", ""})
_NO = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class ListCalls:
    query: CallQuery


@dataclass(frozen=True, slots=True)
class GetCall:
    call_sid: str


@dataclass(frozen=True, slots=True)
class GetTranscript:
    call_sid: str
    format: TranscriptFormat
    download: bool


CallsRequest = ListCalls | GetCall | GetTranscript


@dataclass(frozen=True, slots=True)
class TranscriptFormat:
    """A `format=` of the transcript: its content type, file extension and writer."""

    name: str
    content_type: str
    extension: str
    render: Callable[[FinishedCall], str]


def _json_transcript(call: FinishedCall) -> str:
    return json.dumps(transcript_json(call)) + "\n"


FORMATS: dict[str, TranscriptFormat] = {
    f.name: f
    for f in (
        TranscriptFormat("json", "application/json", "json", _json_transcript),
        TranscriptFormat("txt", "text/plain; charset=utf-8", "txt", transcript_text),
        TranscriptFormat("vtt", "text/vtt; charset=utf-8", "vtt", webvtt),
        TranscriptFormat("srt", "application/x-subrip; charset=utf-8", "srt", srt),
    )
}


def is_calls_path(path: str) -> bool:
    return path == CALLS_PATH or path.startswith(CALLS_PATH + "/")


def parse_request(target: str) -> CallsRequest | None:
    """What the request target (path and query) asks; None if no such resource (404).
    Raises BadCallsRequest for a bad limit, cursor, filter or format."""
    parts = urlsplit(target)
    query = parse_qsl(parts.query, keep_blank_values=True)
    segments = parts.path.removeprefix(CALLS_PATH).split("/")[1:]
    if not segments:
        return ListCalls(list_query(query))
    call_sid = unquote(segments[0])
    if not call_sid:
        return None
    if len(segments) == 1:
        return GetCall(call_sid)
    if segments[1:] == ["transcript"]:
        return GetTranscript(call_sid, transcript_format(query), download(query))
    return None


def list_query(query: list[tuple[str, str]]) -> CallQuery:
    """`GET /calls`' query as a store query; raises BadCallsRequest."""
    limit, before = DEFAULT_LIMIT, None
    filters: dict[str, str] = {}
    for name, value in query:
        if name == "limit":
            limit = parse_limit(value)
        elif name == "before":
            before = decode_cursor(value)
        elif name in RESERVED:
            continue
        elif name in filters:
            raise BadCallsRequest(f"{_shown(name)} is given twice: a call has one value of it")
        else:
            filters[name] = value
    if len(filters) > MAX_FILTERS:
        raise BadCallsRequest(f"at most {MAX_FILTERS} parameters may be filtered by")
    return CallQuery(limit, before, tuple(filters.items()))


def parse_limit(value: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", value) or not 1 <= int(value) <= MAX_LIMIT:
        raise BadCallsRequest(f"limit must be a whole number from 1 to {MAX_LIMIT}")
    return int(value)


def transcript_format(query: list[tuple[str, str]]) -> TranscriptFormat:
    name = dict(query).get("format", "json")
    if name in FORMATS:
        return FORMATS[name]
    raise BadCallsRequest(f"format must be one of {', '.join(FORMATS)}, not {_shown(name)}")


def download(query: list[tuple[str, str]]) -> bool:
    value = dict(query).get("download", "0").lower()
    if value in _YES or value in _NO:
        return value in _YES
    raise BadCallsRequest("download must be 1 or 0")


def encode_cursor(cursor: Cursor) -> str:
    """The opaque text a client passes back as `before`."""
    raw = json.dumps([cursor.ended_at_ms, cursor.call_sid], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor `encode_cursor` wrote; raises BadCallsRequest for any other text."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise BadCallsRequest("before: not a cursor this API gave") from None
    match value:
        case [int(ended_at), str(call_sid)] if not isinstance(ended_at, bool) and ended_at >= 0:
            return Cursor(ended_at, call_sid)
    raise BadCallsRequest("before: not a cursor this API gave")


def page_body(page: CallPage) -> dict[str, object]:
    """`GET /calls`' answer."""
    return {
        "calls": [call.summary() for call in page.calls],
        "next": encode_cursor(page.next) if page.next is not None else None,
    }


def attachment(call_sid: str, extension: str) -> str:
    """A Content-Disposition that saves the transcript as `<callSid>.<ext>` (the name
    reduced to safe characters: it comes from the caller's side)."""
    name = re.sub(r"[^A-Za-z0-9_-]", "_", call_sid)[:64] or "call"
    return f'attachment; filename="{name}.{extension}"'


def _shown(text: str) -> str:
    return repr(text[:40])
