"""The transcript store's contract, checked on each store: a temporary SQLite file and a
real PostgreSQL (`store_env` runs every test once with each)."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.exceptions import StoreError, StoreUnavailable
from twilio_dg_proxy.store import open_store
from twilio_dg_proxy.store import postgres as postgres_store
from twilio_dg_proxy.store import sqlite as sqlite_store
from twilio_dg_proxy.store.base import (
    LONGEST_CALL_MS,
    CallEnded,
    CallQuery,
    CallStarted,
    Cursor,
    FinalResult,
    TranscriptStore,
    events_of,
)
from twilio_dg_proxy.store.postgres import PostgresStore
from twilio_dg_proxy.store.sqlite import SqliteStore
from twilio_dg_proxy.transcripts import FinishedCall
from twilio_dg_proxy.viewer_protocol import CallInfo

from ..postgres_server import PostgresServer


def final(text: str, channel: int = 0, start: float = 0.0) -> str:
    # Spaces and key order as Deepgram's own: kept verbatim, not re-encoded.
    return (
        f'{{"type": "Results", "channel_index": [{channel}, 2], "start": {start}, '
        f'"duration": 1.0, "is_final": true, '
        f'"channel": {{"alternatives": [{{"transcript": {json.dumps(text)}}}]}}}}'
    )


def finished(
    sid: str, ended_at_ms: int, parameters: dict[str, str] | None = None, words: int = 3
) -> FinishedCall:
    info = CallInfo(sid, parameters or {}, ("inbound", "outbound"), ended_at_ms - 60_000)
    finals = tuple(
        final(f'word {i} of {sid} ünïcode ☎ 𝄞 "q" \\', i % 2, float(i)) for i in range(words)
    )
    return FinishedCall(info, ended_at_ms, 1000, "call ended", ("req-a", "req-b"), finals, True)


@pytest.fixture
async def store(store_env: dict[str, str]) -> AsyncIterator[TranscriptStore]:
    async with open_store(Settings.from_env(store_env)) as opened:
        yield opened


async def test_a_saved_call_reads_back_whole_with_its_finals_verbatim(
    store: TranscriptStore,
) -> None:
    call = finished("CA1", 1_700_000_000_000, {"From": "+15550100", "To": "+15550199"})
    await store.save(call)
    assert await store.get_call("CA1") == call
    summary = await store.get_call("CA1", finals=False)
    assert summary is not None and summary.finals == () and summary.summary() == call.summary()
    assert await store.get_call("CA2") is None


async def test_saving_a_call_again_replaces_it(store: TranscriptStore) -> None:
    await store.save(finished("CA1", 1_000, {"From": "a"}))
    again = finished("CA1", 2_000, {"From": "b"}, words=1)
    await store.save(again)
    assert await store.get_call("CA1") == again
    page = await store.list_calls(CallQuery(parameters=(("From", "a"),)))
    assert page.calls == ()


async def test_listing_is_newest_first_and_pages_never_skip_or_repeat(
    store: TranscriptStore,
) -> None:
    # Ties on the end time are ordered by callSid, so a cursor is a place, not an offset.
    ends = {f"CA{i:02d}": 1_000 + (i // 3) * 10 for i in range(20)}
    for sid, ended in ends.items():
        await store.save(finished(sid, ended))
    expected = sorted(ends, key=lambda sid: (ends[sid], sid), reverse=True)
    seen: list[str] = []
    cursor: Cursor | None = None
    while True:
        page = await store.list_calls(CallQuery(limit=7, before=cursor))
        assert all(call.finals == () for call in page.calls)  # a listing loads no transcript
        seen += [call.info.call_sid for call in page.calls]
        if page.next is None:
            break
        cursor = page.next
        # A call ending meanwhile is newer than every page: it shifts none of them.
        await store.save(finished(f"CB{len(seen)}", 9_000))
    assert seen == expected


async def test_a_page_that_ends_exactly_at_the_last_call_has_no_next(
    store: TranscriptStore,
) -> None:
    for i in range(4):
        await store.save(finished(f"CA{i}", 1_000 + i))
    first = await store.list_calls(CallQuery(limit=2))
    assert first.next is not None
    second = await store.list_calls(CallQuery(limit=2, before=first.next))
    assert [c.info.call_sid for c in second.calls] == ["CA1", "CA0"]
    assert second.next is None


async def test_listing_filters_by_every_custom_parameter_given(store: TranscriptStore) -> None:
    await store.save(finished("CA1", 1_000, {"From": "+1555", "To": "+1666"}))
    await store.save(finished("CA2", 2_000, {"From": "+1555", "To": "+1777"}))
    await store.save(finished("CA3", 3_000, {"From": "+1999", "To": "+1666"}))

    async def listed(*parameters: tuple[str, str]) -> list[str]:
        page = await store.list_calls(CallQuery(parameters=parameters))
        return [call.info.call_sid for call in page.calls]

    assert await listed(("From", "+1555")) == ["CA2", "CA1"]
    assert await listed(("From", "+1555"), ("To", "+1666")) == ["CA1"]
    assert await listed(("From", "+1000")) == []
    assert await listed(("Nope", "+1555")) == []


async def test_purge_deletes_the_calls_that_ended_before_the_cutoff(
    store: TranscriptStore,
) -> None:
    for i in range(5):
        await store.save(finished(f"CA{i}", 1_000 * (i + 1), {"From": "x"}))
    assert await store.purge(3_000) == 2
    page = await store.list_calls(CallQuery(parameters=(("From", "x"),)))
    assert [call.info.call_sid for call in page.calls] == ["CA4", "CA3", "CA2"]
    assert await store.get_call("CA0") is None
    assert await store.purge(3_000) == 0


async def test_reopening_keeps_the_calls_and_the_schema(store_env: dict[str, str]) -> None:
    settings = Settings.from_env(store_env)
    async with open_store(settings) as store:
        await store.save(finished("CA1", 1_000))
    async with open_store(settings) as store:
        assert await store.get_call("CA1") == finished("CA1", 1_000)


async def test_a_store_written_by_a_newer_release_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "newer.sqlite3"
    async with SqliteStore.opened(str(path)):
        pass
    # closing(): a connection's own `with` commits but does not close (3.13 warns).
    with closing(sqlite3.connect(path)) as connection, connection:
        connection.execute("UPDATE schema_version SET version = 99")
    with pytest.raises(StoreError, match="newer"):
        async with SqliteStore.opened(str(path)):
            pass


async def test_a_sqlite_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="SQLite"):
        async with SqliteStore.opened(str(tmp_path / "no-such-dir" / "t.sqlite3")):
            pass


async def test_a_postgresql_that_cannot_be_reached_is_unavailable_and_says_why(
    postgres_server: PostgresServer,
) -> None:
    url = postgres_server.url().replace(str(postgres_server.port), "1")  # nothing listens
    with pytest.raises(StoreUnavailable, match="cannot be reached.*refused"):
        async with PostgresStore.opened(url, timeout_s=2.0):
            pass


# Schema version 2: a call written as it goes.


async def test_a_call_written_as_it_goes_is_found_once_ended_with_every_final_in_order(
    store: TranscriptStore,
) -> None:
    call = finished("CA1", 1_700_000_000_000, {"From": "+15550100"}, words=7)
    await store.write([CallStarted(call.info, "1@elsewhere")])
    for first in range(0, 7, 3):  # batches, as the writer sends them
        seqs = range(first, min(first + 3, 7))
        await store.write([FinalResult("CA1", seq, call.finals[seq]) for seq in seqs])
        # A live call is neither found nor listed.
        assert await store.get_call("CA1") is None
        assert (await store.list_calls(CallQuery())).calls == ()
    await store.write([CallEnded(replace(call, finals=()))])
    assert await store.get_call("CA1") == call
    assert (await store.list_calls(CallQuery(parameters=(("From", "+15550100"),)))).calls == (
        replace(call, finals=()),
    )


async def test_writing_the_same_events_again_changes_nothing(store: TranscriptStore) -> None:
    # A write that succeeded but was reported failed (a connection lost at the commit) is
    # retried whole.
    call = finished("CA1", 5_000, {"From": "a"}, words=4)
    events = events_of(call)
    await store.write(events[:3])
    await store.write(events[:3])
    await store.write(events[1:])
    await store.write(events[1:])
    assert await store.get_call("CA1") == call


async def test_finals_and_ends_of_a_call_never_started_are_ignored(
    store: TranscriptStore,
) -> None:
    lost = finished("CA9", 5_000)
    kept = finished("CA1", 6_000)
    await store.write([FinalResult("CA9", 0, lost.finals[0]), *events_of(kept), CallEnded(lost)])
    assert await store.get_call("CA9") is None
    assert await store.get_call("CA1") == kept


async def test_a_call_started_again_replaces_the_earlier_one_and_its_finals(
    store: TranscriptStore,
) -> None:
    await store.save(finished("CA1", 5_000, {"From": "a"}, words=5))
    again = finished("CA1", 9_000, {"From": "b"}, words=2)
    await store.write([CallStarted(again.info), FinalResult("CA1", 0, again.finals[0])])
    assert await store.get_call("CA1") is None  # live again
    await store.write([FinalResult("CA1", 1, again.finals[1]), CallEnded(again)])
    assert await store.get_call("CA1") == again
    assert (await store.list_calls(CallQuery(parameters=(("From", "a"),)))).calls == ()


async def test_purge_deletes_calls_left_live_only_when_no_call_could_last_that_long(
    store: TranscriptStore,
) -> None:
    """A live row is a call streaming now, unless it started more than the longest call
    before the cutoff (a process died with it): a short retention never cuts a live call."""
    dead = finished("CAdead", 5_000 - LONGEST_CALL_MS - 1_000)  # started a day and 61 s before
    live = finished("CAlive", 2_000)  # started at -58 s: before the cutoff, and still live
    await store.write([CallStarted(dead.info), CallStarted(live.info)])
    assert await store.purge(5_000) == 1
    await store.write([CallEnded(dead), CallEnded(live)])
    assert await store.get_call("CAdead") is None
    assert await store.get_call("CAlive") == replace(live, finals=())


# Version 1 (one JSON array of finals per call) migrated to version 2.


def v1_row(call: FinishedCall) -> tuple[object, ...]:
    """A version 1 `calls` row, as release 1 wrote it."""
    info = call.info
    return (
        info.call_sid,
        info.started_at_ms,
        call.ended_at_ms,
        call.end_code,
        call.end_reason,
        json.dumps(list(info.tracks)),
        json.dumps(dict(info.custom_parameters)),
        json.dumps(list(call.request_ids)),
        call.truncated,
        json.dumps(list(call.finals)),
    )


# Escapes, quotes, non-ASCII and an empty transcript: each final must come back verbatim.
V1_CALLS = [
    finished("CA1", 3_000, {"From": "+1555"}, words=5),
    replace(
        finished("CA2", 4_000, {"From": "+1555", "To": "+1666"}, words=0),
        finals=(final('say "hi" \\ back\nthen ☎ 𝄞'), '{"type":"Results"  ,"is_final":true}'),
    ),
    finished("CA3", 5_000, words=0),
]


async def make_v1_store(store_env: dict[str, str], calls: list[FinishedCall]) -> None:
    """A store as release 1 left it: its DDL (`MIGRATIONS[0]`), schema version 1, calls."""
    marks = ", ".join(["%s"] * 10)
    parameters = [
        (c.info.call_sid, name, value)
        for c in calls
        for name, value in c.info.custom_parameters.items()
    ]
    if "TRANSCRIPTS_FILE" in store_env:
        with closing(sqlite3.connect(store_env["TRANSCRIPTS_FILE"])) as connection, connection:
            for statement in sqlite_store.MIGRATIONS[0]:
                connection.execute(statement)
            connection.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            connection.execute("INSERT INTO schema_version VALUES (1)")
            connection.executemany(
                f"INSERT INTO calls VALUES ({marks})".replace("%s", "?"), map(v1_row, calls)
            )
            connection.executemany("INSERT INTO call_parameters VALUES (?, ?, ?)", parameters)
        return
    async with await psycopg.AsyncConnection.connect(store_env["DATABASE_URL"]) as postgres:
        for statement in postgres_store.MIGRATIONS[0]:
            await postgres.execute(statement)
        await postgres.execute("CREATE TABLE schema_version (version integer NOT NULL)")
        await postgres.execute("INSERT INTO schema_version VALUES (1)")
        async with postgres.cursor() as cursor:
            await cursor.executemany(
                f"INSERT INTO calls VALUES ({marks})", list(map(v1_row, calls))
            )
            await cursor.executemany("INSERT INTO call_parameters VALUES (%s, %s, %s)", parameters)


async def test_a_version_1_store_is_migrated_with_every_final_verbatim(
    store_env: dict[str, str],
) -> None:
    await make_v1_store(store_env, V1_CALLS)
    settings = Settings.from_env(store_env)
    async with open_store(settings) as store:
        for call in V1_CALLS:
            assert await store.get_call(call.info.call_sid) == call
        listed = await store.list_calls(CallQuery(parameters=(("From", "+1555"),)))
        assert [c.info.call_sid for c in listed.calls] == ["CA2", "CA1"]
        # Version 2 goes on from there: a call started again, written as it goes.
        again = finished("CA1", 8_000, words=2)
        await store.write(events_of(again))
        assert await store.get_call("CA1") == again
        assert await store.purge(4_500) == 1  # CA2, with its finals and parameters
        assert await store.get_call("CA2") is None
    async with open_store(settings) as store:  # opened again: already version 2
        assert await store.get_call("CA3") == V1_CALLS[2]


async def test_the_sqlite_schema_after_migration_is_the_schema_of_a_new_file(
    tmp_path: Path,
) -> None:
    await make_v1_store({"TRANSCRIPTS_FILE": str(tmp_path / "v1.sqlite3")}, [])
    async with SqliteStore.opened(str(tmp_path / "v1.sqlite3")):
        pass
    async with SqliteStore.opened(str(tmp_path / "new.sqlite3")):
        pass

    def schema(name: str) -> list[tuple[str, str]]:
        with closing(sqlite3.connect(tmp_path / name)) as connection:
            found = connection.execute("SELECT name, sql FROM sqlite_schema ORDER BY name")
            return [(n, " ".join((sql or "").split())) for n, sql in found]

    assert schema("v1.sqlite3") == schema("new.sqlite3")
    with closing(sqlite3.connect(tmp_path / "v1.sqlite3")) as connection:
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("SELECT version FROM schema_version").fetchall() == [(2,)]


# Calls left live by a process that stopped.


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(process.stdout)


def with_timeline(sid: str, *ends: float) -> FinishedCall:
    """A call whose finals end `ends` seconds into it."""
    call = finished(sid, 100_000, words=0)
    return replace(call, finals=tuple(final(f"w{i}", 0, end - 1.0) for i, end in enumerate(ends)))


async def start_live(store: TranscriptStore, call: FinishedCall, instance: str) -> None:
    sid = call.info.call_sid
    await store.write(
        [
            CallStarted(call.info, instance),
            *(FinalResult(sid, i, t) for i, t in enumerate(call.finals)),
        ]
    )


async def test_at_start_sqlite_marks_ended_the_calls_of_a_process_that_stopped(
    tmp_path: Path,
) -> None:
    path = str(tmp_path / "t.sqlite3")
    host = socket.gethostname()
    killed = with_timeline("CAkilled", 2.5, 7.25, 4.0)
    silent = with_timeline("CAsilent")
    running = with_timeline("CArunning", 1.0)
    remote = with_timeline("CAremote", 1.0)
    async with SqliteStore.opened(path) as store:
        pid = dead_pid()
        await start_live(store, killed, f"{pid}@{host}")
        await start_live(store, silent, f"{pid}@{host}")
        await start_live(store, running, f"{os.getppid()}@{host}")  # alive
        await start_live(store, remote, f"{pid}@another-host")  # cannot tell
    async with SqliteStore.opened(path) as store:
        found = await store.get_call("CAkilled")
        assert found == replace(
            killed,
            ended_at_ms=killed.info.started_at_ms + 7_250,  # when its last final ended
            end_code=1006,
            end_reason="interrupted: the proxy stopped",
            request_ids=(),
            truncated=False,
        )
        silent_found = await store.get_call("CAsilent")
        assert silent_found is not None
        assert silent_found.ended_at_ms == silent.info.started_at_ms
        assert await store.get_call("CArunning") is None
        assert await store.get_call("CAremote") is None
        # The writer of a call marked ended may still finish it (a pid reused...): it wins.
        await store.write([CallEnded(running)])
        assert await store.get_call("CArunning") == running


async def test_postgresql_leaves_calls_live_whatever_became_of_their_instance(
    postgres_url: str,
) -> None:
    call = with_timeline("CAkilled", 2.5)
    async with PostgresStore.opened(postgres_url) as store:
        await start_live(store, call, f"{dead_pid()}@{socket.gethostname()}")
    async with PostgresStore.opened(postgres_url) as store:
        assert await store.get_call("CAkilled") is None  # still live: shared, no guessing
        await store.write([CallEnded(call)])
        assert await store.get_call("CAkilled") == call
