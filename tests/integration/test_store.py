"""The transcript store's contract, checked on each store: a temporary SQLite file and a
real PostgreSQL (`store_env` runs every test once with each)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from pathlib import Path

import pytest

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.exceptions import StoreError, StoreUnavailable
from twilio_dg_proxy.store import open_store
from twilio_dg_proxy.store.base import CallQuery, Cursor, TranscriptStore
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
    finals = tuple(final(f"word {i} of {sid} ünïcode", i % 2, float(i)) for i in range(words))
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
