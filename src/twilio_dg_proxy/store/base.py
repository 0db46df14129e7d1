"""What every transcript store offers (pure): the `TranscriptStore` protocol, the events it
writes, its queries and pages, and the one way a call becomes a row and back.

Both stores keep the same schema (version 2): a `calls` row per call, written when the call
starts (its info; `ended_at_ms`, `end_code` and `end_reason` NULL while it is live, and the
`instance` streaming it) and completed when it ends (how it ended, its request ids, whether
its transcript was truncated); a `finals` row per final result (callSid, `seq` from 0 in the
order received, Deepgram's text verbatim), appended while the call runs; a
`call_parameters` row per custom parameter (so that a listing can filter by one through an
index); and a `schema_version` table that says which of `MIGRATIONS`' steps have run.

Why a row per final rather than one blob per call (version 1): the finals reach the store
while the call runs, so the proxy holds none of them for the whole call and a crash loses
at most the last batch; appends are batched (`writer`), a few milliseconds of the store's
thread per second of a hundred calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from ..transcripts import FinishedCall
from ..viewer_protocol import CallInfo

#: No call lasts longer (Twilio's time limit for a call tops out at 24 hours): a row still
#: live that started this long before the retention cutoff was left by a process that died.
#: Purged before that, a live call would lose the rest of its transcript.
LONGEST_CALL_MS = 24 * 3600 * 1000

#: The schema this code writes. A store whose version is higher was written by a newer
#: release, and is refused rather than misread.
SCHEMA_VERSION = 2

#: Columns of `calls` a call is read from, in the order `summary_row` gives them.
SUMMARY_COLUMNS = (
    "call_sid",
    "started_at_ms",
    "ended_at_ms",
    "end_code",
    "end_reason",
    "tracks",
    "parameters",
    "request_ids",
    "truncated",
)
#: The close code and reason of a call whose proxy stopped without ending it (its watchers
#: saw the connection drop: 1006, no close frame).
INTERRUPTED_CODE = 1006
INTERRUPTED_REASON = "interrupted: the proxy stopped"


# What the writer writes: a call's start, each of its finals, its end.


@dataclass(frozen=True, slots=True)
class CallStarted:
    """A call began: its row is written (replacing any call stored under its callSid, and
    that call's finals), live, as streamed by `instance`."""

    info: CallInfo
    instance: str = ""


@dataclass(frozen=True, slots=True)
class FinalResult:
    """The `seq`-th final (from 0) of a started call: Deepgram's text, verbatim."""

    call_sid: str
    seq: int
    text: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """A started call ended: its row is completed from `call` (whose finals are ignored:
    they were written as `FinalResult`s)."""

    call: FinishedCall


StoreEvent = CallStarted | FinalResult | CallEnded


def events_of(call: FinishedCall) -> list[StoreEvent]:
    """The events that store a whole finished call at once."""
    sid = call.info.call_sid
    return [
        CallStarted(call.info),
        *(FinalResult(sid, seq, text) for seq, text in enumerate(call.finals)),
        CallEnded(call),
    ]


def runs(events: Sequence[StoreEvent]) -> Iterator[list[StoreEvent]]:
    """`events` in runs of one kind, in order: each run is one statement executed many
    times (a call's start, finals and end keep their order, since runs do)."""
    run: list[StoreEvent] = []
    for event in events:
        if run and type(run[0]) is not type(event):
            yield run
            run = []
        run.append(event)
    if run:
        yield run


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
    """Where calls are kept, from their start. Every method raises StoreUnavailable when the
    store cannot be reached or cannot write now (worth retrying) and StoreError when it
    cannot do what is asked at all. Only ended calls are listed or read: a live call (or
    one whose proxy stopped, until marked) is not found."""

    kind: str  # "sqlite" or "postgresql", for /healthz and logs

    async def write(self, events: Sequence[StoreEvent]) -> None:
        """Apply `events` in order, in one transaction. Writing the same events again
        changes nothing (a retried write that had in fact succeeded). A final or an end of
        a call never started is ignored."""
        ...

    async def save(self, call: FinishedCall) -> None:
        """Keep the whole `call` at once (`events_of`), replacing any call stored with its
        callSid."""
        ...

    async def list_calls(self, query: CallQuery) -> CallPage:
        """The ended calls `query` asks for, newest first (by end, then callSid)."""
        ...

    async def get_call(self, call_sid: str, *, finals: bool = True) -> FinishedCall | None:
        """The ended call stored under `call_sid` (without its finals unless `finals`), or
        None."""
        ...

    async def purge(self, ended_before_ms: int) -> int:
        """Delete the calls that ended before `ended_before_ms`, and those left live that
        started before it; return how many."""
        ...


def page_of(rows: list[FinishedCall], limit: int) -> CallPage:
    """A page from up to `limit + 1` rows read newest first: the extra row only says that
    there is a next page."""
    calls = tuple(rows[:limit])
    more = len(rows) > limit and calls
    return CallPage(calls, cursor_of(calls[-1]) if more else None)


def cursor_of(call: FinishedCall) -> Cursor:
    return Cursor(call.ended_at_ms, call.info.call_sid)


#: Columns a `CallStarted` writes, in the order `started_row` gives them.
STARTED_COLUMNS = (
    "call_sid",
    "started_at_ms",
    "tracks",
    "parameters",
    "request_ids",
    "truncated",
    "instance",
)


def started_row(event: CallStarted, as_json: Callable[[Any], Any] = json.dumps) -> tuple[Any, ...]:
    """The live `calls` row of a started call, in `STARTED_COLUMNS` order: the info's JSON
    columns through `as_json` (text by default)."""
    info = event.info
    return (
        info.call_sid,
        info.started_at_ms,
        as_json(list(info.tracks)),
        as_json(dict(info.custom_parameters)),
        as_json([]),
        False,
        event.instance,
    )


def ended_row(event: CallEnded, as_json: Callable[[Any], Any] = json.dumps) -> tuple[Any, ...]:
    """The values that complete an ended call's row: ended_at_ms, end_code, end_reason,
    request_ids, truncated, then the callSid (the statement's key)."""
    call = event.call
    return (
        call.ended_at_ms,
        call.end_code,
        call.end_reason,
        as_json(list(call.request_ids)),
        call.truncated,
        call.info.call_sid,
    )


def parameter_rows(events: Sequence[StoreEvent]) -> list[tuple[str, str, str]]:
    """The `call_parameters` rows of the calls `events` start."""
    return [
        (e.info.call_sid, name, value)
        for e in events
        if isinstance(e, CallStarted)
        for name, value in e.info.custom_parameters.items()
    ]


def call_from_row(row: Mapping[str, Any], finals: Sequence[str] = ()) -> FinishedCall:
    """The call of a `calls` row read by column name (JSON columns as text, or already
    decoded as PostgreSQL's jsonb is), with `finals`; the row must be of an ended call."""
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
        tuple(finals),
        bool(row["truncated"]),
    )


def _decoded(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


def get_query(mark: str) -> str:
    """The SQL that reads an ended call's row by callSid (`mark` its placeholder)."""
    return (
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls"
        f" WHERE call_sid = {mark} AND ended_at_ms IS NOT NULL"
    )


def finals_query(mark: str) -> str:
    """The SQL that reads a call's finals, in order."""
    return f"SELECT text FROM finals WHERE call_sid = {mark} ORDER BY seq"


def list_query(query: CallQuery, mark: str) -> tuple[str, list[Any]]:
    """The SQL (with `mark` as the placeholder: `?` or `%s`) and arguments that list
    `query`'s page of ended calls, newest first, one more than its limit (to know if there
    is a next page). Both stores use the same schema."""
    conditions: list[str] = ["ended_at_ms IS NOT NULL"]
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
    sql = (
        f"SELECT {', '.join(SUMMARY_COLUMNS)} FROM calls WHERE {' AND '.join(conditions)} "
        f"ORDER BY ended_at_ms DESC, call_sid DESC LIMIT {mark}"
    )
    return sql, [*args, query.limit + 1]


def write_statements(mark: str, ignore_duplicate: str) -> dict[type, tuple[str, ...]]:
    """Per kind of event, the statements that apply a run of them (each executed once per
    event, with `statement_args`), in both stores' SQL: `mark` the placeholder,
    `ignore_duplicate` the clause that makes a second insert of a final do nothing."""
    started = ", ".join(STARTED_COLUMNS)
    return {
        CallStarted: (
            f"DELETE FROM calls WHERE call_sid = {mark}",  # and its finals and parameters
            f"INSERT INTO calls ({started}) VALUES ({', '.join(mark for _ in STARTED_COLUMNS)})",
        ),
        FinalResult: (
            # Only for a call that has a row: a final never breaks a batch's foreign key.
            f"INSERT INTO finals (call_sid, seq, text) SELECT {mark}, {mark}, {mark}"
            f" WHERE EXISTS (SELECT 1 FROM calls WHERE call_sid = {mark}) {ignore_duplicate}",
        ),
        CallEnded: (
            f"UPDATE calls SET ended_at_ms = {mark}, end_code = {mark}, end_reason = {mark},"
            f" request_ids = {mark}, truncated = {mark} WHERE call_sid = {mark}",
        ),
    }


def final_args(event: FinalResult) -> tuple[str, int, str, str]:
    """The arguments of the `FinalResult` statement (the callSid again: the row check)."""
    return (event.call_sid, event.seq, event.text, event.call_sid)


def final_rows(run: Sequence[StoreEvent]) -> Iterator[tuple[str, int, str, str]]:
    """`final_args` of each final of `run`."""
    return (final_args(e) for e in run if isinstance(e, FinalResult))


def statement_args(
    event: StoreEvent, index: int, as_json: Callable[[Any], Any] = json.dumps
) -> tuple[Any, ...]:
    """The arguments of the `index`-th statement of `write_statements` for `event`."""
    match event:
        case CallStarted():
            return (event.info.call_sid,) if index == 0 else started_row(event, as_json)
        case FinalResult():
            return final_args(event)
        case CallEnded():
            return ended_row(event, as_json)
