"""What every transcript store offers (pure): the `TranscriptStore` protocol, its queries and
pages, and the one way a `FinishedCall` becomes a row and back.

Both stores keep the same schema: a `calls` row per call (its info, how it ended, its
request ids, and its finals as one JSON array of Deepgram's texts), a `call_parameters` row
per custom parameter (so that a listing can filter by one through an index), and a
`schema_version` table that says which of `MIGRATIONS`' steps have run.

Why one blob of finals rather than a row each: a transcript is only ever written once, whole,
and read whole; one row keeps a save to a few statements however long the call, and the
finals are kept as the exact texts Deepgram sent (a JSON array of strings, not re-encoded
objects).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from ..transcripts import FinishedCall
from ..viewer_protocol import CallInfo

#: The schema this code writes. A store whose version is higher was written by a newer
#: release, and is refused rather than misread.
SCHEMA_VERSION = 1

#: Columns of `calls`, in the order `call_row` gives them.
CALL_COLUMNS = (
    "call_sid",
    "started_at_ms",
    "ended_at_ms",
    "end_code",
    "end_reason",
    "tracks",
    "parameters",
    "request_ids",
    "truncated",
    "finals",
)
#: What a listing reads: every column but the finals.
SUMMARY_COLUMNS = CALL_COLUMNS[:-1]


@dataclass(frozen=True, slots=True, order=True)
class Cursor:
    """A place in the newest-first listing: the calls strictly before it are older (ended
    earlier, or at the same millisecond with a smaller callSid)."""

    ended_at_ms: int
    call_sid: str


@dataclass(frozen=True, slots=True)
class CallQuery:
    """Which calls to list: at most `limit`, before `before` (from the newest if None),
    whose custom parameters include every (name, value) of `parameters`."""

    limit: int = 50
    before: Cursor | None = None
    parameters: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class CallPage:
    """One page of a listing, newest first; `next` is where the next page starts (None when
    there are no more). Listed calls carry no finals (`finals` is empty): a listing never
    loads transcripts."""

    calls: tuple[FinishedCall, ...]
    next: Cursor | None


class TranscriptStore(Protocol):
    """Where finished calls are kept. Every method raises StoreUnavailable when the store
    cannot be reached or cannot write now (worth retrying) and StoreError when it cannot do
    what is asked at all."""

    kind: str  # "sqlite" or "postgresql", for /healthz and logs

    async def save(self, call: FinishedCall) -> None:
        """Keep `call`, replacing any call stored with its callSid (so a retried save that
        had in fact succeeded changes nothing)."""
        ...

    async def list_calls(self, query: CallQuery) -> CallPage:
        """The calls `query` asks for, newest first (by end, then callSid)."""
        ...

    async def get_call(self, call_sid: str, *, finals: bool = True) -> FinishedCall | None:
        """The call stored under `call_sid` (without its finals unless `finals`), or None."""
        ...

    async def purge(self, ended_before_ms: int) -> int:
        """Delete the calls that ended before `ended_before_ms`; return how many."""
        ...


def page_of(rows: list[FinishedCall], limit: int) -> CallPage:
    """A page from up to `limit + 1` rows read newest first: the extra row only says that
    there is a next page."""
    calls = tuple(rows[:limit])
    more = len(rows) > limit and calls
    return CallPage(calls, cursor_of(calls[-1]) if more else None)


def cursor_of(call: FinishedCall) -> Cursor:
    return Cursor(call.ended_at_ms, call.info.call_sid)


def call_row(call: FinishedCall, as_json: Callable[[Any], Any] = json.dumps) -> tuple[Any, ...]:
    """The `calls` row of `call`, in `CALL_COLUMNS` order: the info's JSON columns through
    `as_json` (text by default), the finals always as JSON text."""
    info = call.info
    return (
        info.call_sid,
        info.started_at_ms,
        call.ended_at_ms,
        call.end_code,
        call.end_reason,
        as_json(list(info.tracks)),
        as_json(dict(info.custom_parameters)),
        as_json(list(call.request_ids)),
        call.truncated,
        json.dumps(list(call.finals)),
    )


def call_from_row(row: Mapping[str, Any]) -> FinishedCall:
    """The call of a `calls` row read by column name (JSON columns as text, or already
    decoded as PostgreSQL's jsonb is); without finals if the row has none."""
    finals = row.get("finals")
    return FinishedCall(
        CallInfo(
            row["call_sid"],
            {str(k): str(v) for k, v in _decoded(row["parameters"]).items()},
            tuple(_decoded(row["tracks"])),
            int(row["started_at_ms"]),
        ),
        int(row["ended_at_ms"]),
        int(row["end_code"]),
        row["end_reason"],
        tuple(_decoded(row["request_ids"])),
        tuple(_decoded(finals)) if finals is not None else (),
        bool(row["truncated"]),
    )


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def list_query(query: CallQuery, mark: str) -> tuple[str, list[Any]]:
    """The SQL (with `mark` as the placeholder: `?` or `%s`) and arguments that list
    `query`'s page of calls, newest first, one more than its limit (to know if there is a
    next page). Both stores use the same schema."""
    conditions: list[str] = []
    args: list[Any] = []
    if query.before is not None:
        conditions.append(f"(ended_at_ms, call_sid) < ({mark}, {mark})")
        args += [query.before.ended_at_ms, query.before.call_sid]
    for name, value in query.parameters:
        conditions.append(
            "call_sid IN (SELECT call_sid FROM call_parameters"
            f" WHERE name = {mark} AND value = {mark})"
        )
        args += [name, value]
    where = f"WHERE {' AND '.join(conditions)}" if conditions else ""
    sql = (
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls {where} "
        f"ORDER BY ended_at_ms DESC, call_sid DESC LIMIT {mark}"
    )
    return sql, [*args, query.limit + 1]
