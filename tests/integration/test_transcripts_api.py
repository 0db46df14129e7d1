"""Stored transcripts end to end: simulated Twilio → proxy → fake Deepgram → watchers, then
the store (a SQLite file, or a real PostgreSQL) and the /calls API over real HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import srt as srt_parser  # type: ignore[import-untyped]  # srt ships no type hints
import webvtt

from twilio_dg_proxy.backoff import Backoff
from twilio_dg_proxy.calls_protocol import encode_cursor
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import CALL_ENDED
from twilio_dg_proxy.store.base import CallQuery, Cursor
from twilio_dg_proxy.store.sqlite import SqliteStore
from twilio_dg_proxy.store.writer import EVENT_OVERHEAD
from twilio_dg_proxy.transcripts import FinishedCall
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern
from twilio_dg_proxy.viewer_protocol import CallInfo

from ..postgres_server import PostgresServer
from ..timing import S
from .helpers import RunningProxy, TwilioPeer, Watcher, results, running_proxy, until

TOKEN = "client-token-0123456789abcdef"
FAST_RETRY = Backoff(0.05, 0.2)  # the store's retries, quick enough for a test
DAY_MS = 86_400_000


class Answer:
    """An HTTP answer, read whole."""

    def __init__(self, response: http.client.HTTPResponse) -> None:
        self.status = response.status
        self.headers = response.headers
        self.body = response.read()

    def json(self) -> Any:
        assert self.headers["Content-Type"] == "application/json"
        return json.loads(self.body)


async def get(
    proxy: RunningProxy, path: str, headers: dict[str, str] | None = None, method: str = "GET"
) -> Answer:
    def fetch() -> Answer:
        connection = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=10 * S)
        try:
            connection.request(method, path, headers=headers or {})
            return Answer(connection.getresponse())
        finally:
            connection.close()

    return await asyncio.to_thread(fetch)


async def run_call(proxy: RunningProxy, call: SimulatedCall, seconds: float = 1.0) -> list[str]:
    """Play `call` with both tracks talking; what one /client watcher received."""
    n = int(seconds * 8000)
    audio = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n, offset=7)}
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(audio))  # type: ignore[arg-type]
        await twilio.stop()
        return await watcher.transcript()


def finals_with_text(messages: list[str]) -> list[dict[str, Any]]:
    return [
        m
        for m in results(messages)
        if m["is_final"] and m["channel"]["alternatives"][0]["transcript"].strip()
    ]


def text_lines(finals: list[dict[str, Any]], names: tuple[str, str]) -> str:
    """The txt transcript as it should read: `[mm:ss] Speaker: text`, in time order."""
    ordered = sorted(finals, key=lambda m: (m["start"], m["channel_index"][0]))
    return "".join(
        f"[{int(m['start']) // 60:02d}:{int(m['start']) % 60:02d}] "
        f"{names[m['channel_index'][0]]}: {m['channel']['alternatives'][0]['transcript'].strip()}\n"
        for m in ordered
    )


def channel_words(finals: list[dict[str, Any]], channel: int) -> list[str]:
    ordered = sorted(finals, key=lambda m: m["start"])
    return [
        word
        for m in ordered
        if m["channel_index"][0] == channel
        for word in m["channel"]["alternatives"][0]["transcript"].split()
    ]


async def check_captions(
    proxy: RunningProxy, sid: str, finals: list[dict[str, Any]], names: tuple[str, str]
) -> None:
    """The vtt and srt transcripts, read by parsers we did not write, hold each speaker's
    words in the order spoken."""
    vtt = await get(proxy, f"/calls/{sid}/transcript?format=vtt&download=1")
    assert vtt.headers["Content-Type"] == "text/vtt; charset=utf-8"
    assert vtt.headers["Content-Disposition"] == f'attachment; filename="{sid}.vtt"'
    captions = webvtt.from_string(vtt.body.decode(), strict=True).captions
    srt_answer = await get(proxy, f"/calls/{sid}/transcript?format=srt")
    subtitles = list(srt_parser.parse(srt_answer.body.decode()))
    for channel, name in enumerate(names):
        expected = channel_words(finals, channel)
        assert [w for c in captions if c.voice == name for w in c.text.split()] == expected
        label = f"{name}: "
        spoken = [s.content.removeprefix(label) for s in subtitles if s.content.startswith(label)]
        assert [w for text in spoken for w in text.split()] == expected


def finished(sid: str, ended_at_ms: int, parameters: dict[str, str] | None = None) -> FinishedCall:
    info = CallInfo(sid, parameters or {}, ("inbound",), ended_at_ms - 1_000)
    return FinishedCall(info, ended_at_ms, 1000, "call ended")


async def test_a_stored_transcript_is_what_the_watchers_received_in_every_format(
    deepgram: FakeDeepgram, store_env: dict[str, str]
) -> None:
    parameters = {"From": "+15550100", "CalleeName": "Dana", "secret": "s3cret-s3cret"}
    call = SimulatedCall(custom_parameters=parameters)
    async with running_proxy(
        deepgram.url, **store_env, TWILIO_STREAM_SECRET="s3cret-s3cret"
    ) as proxy:
        received = await run_call(proxy, call)
        counters = proxy.server.hub.counters
        await until(lambda: counters.transcripts_stored == 1)
        sid = call.call_sid
        stored = (await get(proxy, f"/calls/{sid}/transcript")).json()
        finals = finals_with_text(received)
        assert len(finals) >= 10
        assert stored["results"] == finals  # every final, verbatim, in the order received
        assert [s["text"] for s in stored["segments"]] == [
            line.split(": ", 1)[1] for line in text_lines(finals, ("Caller", "Dana")).splitlines()
        ]
        await check_captions(proxy, sid, finals, ("Caller", "Dana"))
        txt = await get(proxy, f"/calls/{sid}/transcript?format=txt")
        assert txt.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert txt.body.decode() == text_lines(finals, ("Caller", "Dana"))
        summary = (await get(proxy, f"/calls/{sid}")).json()
        assert summary == stored["call"]
        assert summary["customParameters"] == {"From": "+15550100", "CalleeName": "Dana"}
        assert summary["endCode"] == 1000 and summary["tracks"] == ["inbound", "outbound"]
        assert summary["requestIds"] == [s.request_id for s in deepgram.streams]
        listed = (await get(proxy, "/calls?From=%2B15550100")).json()
        assert listed == {"calls": [summary], "next": None}
        health = proxy.server.health()
        assert health["store"] == {
            "kind": proxy.server.store.kind,  # type: ignore[union-attr]
            "reachable": True,
            "queued": 0,
            "queued_bytes": 0,
        }


async def test_pages_and_filters_through_the_api(
    deepgram: FakeDeepgram, store_env: dict[str, str]
) -> None:
    async with running_proxy(deepgram.url, **store_env) as proxy:
        assert proxy.server.store is not None
        for i in range(7):
            await proxy.server.store.save(finished(f"CA{i}", 10_000 + i, {"From": f"+{i % 2}"}))
        seen: list[str] = []
        path = "/calls?From=%2B0&limit=3"
        while True:
            page = (await get(proxy, path)).json()
            seen += [call["callSid"] for call in page["calls"]]
            if page["next"] is None:
                break
            path = f"/calls?From=%2B0&limit=3&before={page['next']}"
        assert seen == ["CA6", "CA4", "CA2", "CA0"]
        everything = (await get(proxy, "/calls")).json()
        assert [c["callSid"] for c in everything["calls"]] == [f"CA{i}" for i in range(6, -1, -1)]


async def test_a_transcript_download_is_named_after_the_call(deepgram: FakeDeepgram) -> None:
    async with running_proxy(deepgram.url) as proxy:
        assert proxy.server.store is not None
        await proxy.server.store.save(finished("CA1", 5_000))
        answer = await get(proxy, "/calls/CA1/transcript?format=txt&download=1")
        assert answer.status == 200
        assert answer.headers["Content-Disposition"] == 'attachment; filename="CA1.txt"'
        assert answer.headers["Cache-Control"] == "no-store"
        inline = await get(proxy, "/calls/CA1/transcript")
        assert inline.headers["Content-Disposition"] is None
        assert inline.json()["segments"] == []


async def test_tokens_unknown_calls_bad_queries_and_methods_get_their_status(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url, CLIENT_TOKENS=TOKEN) as proxy:
        assert proxy.server.store is not None
        await proxy.server.store.save(finished("CA1", 5_000))
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for path in ("/calls", "/calls/CA1", "/calls/CA1/transcript"):
            refused = await get(proxy, path)
            assert refused.status == 401, path
            assert refused.headers["WWW-Authenticate"] == "Bearer"
            assert (
                await get(proxy, path, {"Authorization": "Bearer wrong-token-0000000"})
            ).status == 401
            assert (await get(proxy, path, bearer)).status == 200
            assert (await get(proxy, f"{path}?token={TOKEN}")).status == 200
        assert proxy.server.hub.counters.refused_unauthorized == 6
        for path, status in [
            ("/calls/CA2", 404),
            ("/calls/CA2/transcript", 404),
            ("/calls/CA1/elsewhere", 404),
            ("/calls?limit=501", 400),
            ("/calls?limit=0", 400),
            ("/calls?before=garbage", 400),
            ("/calls/CA1/transcript?format=doc", 400),
        ]:
            answer = await get(proxy, path, bearer)
            assert answer.status == status, path
            assert "error" in answer.json()
            assert answer.headers["Cache-Control"] == "no-store"
        posted = await get(proxy, "/calls", bearer, method="POST")
        assert posted.status == 405 and posted.headers["Allow"] == "GET"


async def test_without_storing_there_is_no_store_and_no_file(
    deepgram: FakeDeepgram, transcripts_file: Path
) -> None:
    async with running_proxy(deepgram.url, STORE_TRANSCRIPTS="false") as proxy:
        await run_call(proxy, SimulatedCall(), 0.3)
        answer = await get(proxy, "/calls")
        assert answer.status == 404 and "not stored" in answer.json()["error"]
        assert "store" not in proxy.server.health()
        assert proxy.server.hub.sinks == []
    assert not await asyncio.to_thread(transcripts_file.exists)


async def test_old_calls_are_purged_at_start(
    deepgram: FakeDeepgram, store_env: dict[str, str]
) -> None:
    now = time.time_ns() // 1_000_000
    async with running_proxy(deepgram.url, **store_env) as proxy:
        assert proxy.server.store is not None
        await proxy.server.store.save(finished("CAold", now - 31 * DAY_MS))
        await proxy.server.store.save(finished("CAnew", now - 29 * DAY_MS))
    async with running_proxy(deepgram.url, **store_env, RETENTION_DAYS="30") as proxy:
        store = proxy.server.store
        assert store is not None

        async def listed() -> list[str]:
            page = await store.list_calls(CallQuery())
            return [c.info.call_sid for c in page.calls]

        async with asyncio.timeout(5 * S):
            while await listed() != ["CAnew"]:  # noqa: ASYNC110  # nothing to await
                await asyncio.sleep(0.01)


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Another connection holds the SQLite file's write lock (WAL: readers still read)."""
    connection = sqlite3.connect(path, isolation_level=None)
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        connection.execute("COMMIT")
        connection.close()


async def test_sqlite_locked_mid_call_keeps_the_transcript_waiting_then_stores_it(
    deepgram: FakeDeepgram, transcripts_file: Path
) -> None:
    call = SimulatedCall()
    async with running_proxy(deepgram.url, {"store_retry": FAST_RETRY}) as proxy:
        counters = proxy.server.hub.counters
        with locked(transcripts_file):
            received = await run_call(proxy, call)
            await until(lambda: counters.store_errors >= 2)
            health = proxy.server.health()["store"]
            assert isinstance(health, dict) and health.pop("queued_bytes") > 0
            assert health == {"kind": "sqlite", "reachable": False, "queued": 1}
            assert counters.transcripts_stored == 0
        await until(lambda: counters.transcripts_stored == 1)
        assert counters.transcripts_lost == 0
        stored = (await get(proxy, f"/calls/{call.call_sid}/transcript")).json()
        assert stored["results"] == finals_with_text(received)


async def test_postgresql_down_mid_call_keeps_the_transcript_waiting_then_stores_it(
    deepgram: FakeDeepgram, own_postgres: PostgresServer
) -> None:
    calls = [SimulatedCall(), SimulatedCall()]
    env = {"DATABASE_URL": own_postgres.url()}
    async with running_proxy(deepgram.url, {"store_retry": FAST_RETRY}, **env) as proxy:
        counters = proxy.server.hub.counters
        received = [await run_call(proxy, calls[0], 0.5)]
        await until(lambda: counters.transcripts_stored == 1)
        n = 8000
        audio = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}
        async with TwilioPeer.started(proxy, calls[1]) as twilio:
            watcher = await Watcher.join(proxy, calls[1].call_sid)
            await twilio.send_all(calls[1].frames(audio))  # type: ignore[arg-type]
            own_postgres.stop()  # mid-call
            await twilio.stop()
            received.append(await watcher.transcript())
        await until(lambda: counters.store_errors >= 1, within=20 * S)
        assert proxy.server.health()["store"]["queued"] == 1  # type: ignore[index]
        own_postgres.restart()
        await until(lambda: counters.transcripts_stored == 2, within=30 * S)
        assert counters.transcripts_lost == 0
        for call, messages in zip(calls, received, strict=True):
            stored = (await get(proxy, f"/calls/{call.call_sid}/transcript")).json()
            assert stored["results"] == finals_with_text(messages)
        listed = (await get(proxy, "/calls")).json()
        assert [c["callSid"] for c in listed["calls"]] == [c.call_sid for c in reversed(calls)]


async def test_beyond_the_queue_the_oldest_waiting_calls_are_lost_and_counted(
    deepgram: FakeDeepgram, transcripts_file: Path
) -> None:
    # Without finals, only whole calls can go: each start or end counts EVENT_OVERHEAD.
    assert EVENT_OVERHEAD == 200
    options = {"store_retry": FAST_RETRY}
    async with running_proxy(deepgram.url, options, STORE_QUEUE_BYTES="1024") as proxy:  # type: ignore[arg-type]
        hub, counters = proxy.server.hub, proxy.server.hub.counters
        with locked(transcripts_file):
            for i in range(5):  # all end at once, before the writer runs
                hub.open_call(f"CA{i}", CallInfo(f"CA{i}", {}, ("inbound",), 1_000))
            for i in range(5):
                hub.end_call(f"CA{i}", CALL_ENDED)
            assert counters.transcripts_lost == 3
            await until(lambda: counters.store_errors >= 1)
        await until(lambda: counters.transcripts_stored == 2)
        listed = (await get(proxy, "/calls")).json()
        assert sorted(c["callSid"] for c in listed["calls"]) == ["CA3", "CA4"]
        assert proxy.server.health()["totals"]["transcripts_lost"] == 3  # type: ignore[index]


async def test_at_shutdown_queued_calls_are_saved_or_counted_lost(
    deepgram: FakeDeepgram, transcripts_file: Path
) -> None:
    options: Any = {"store_retry": FAST_RETRY, "store_flush_timeout_s": 0.3 * S}
    async with running_proxy(deepgram.url, options) as proxy:
        hub = proxy.server.hub
        hub.open_call("CA1", CallInfo("CA1"))
        hub.end_call("CA1", CALL_ENDED)  # queued as the server stops: flushed
    assert hub.counters.transcripts_stored == 1
    with locked(transcripts_file):
        async with running_proxy(deepgram.url, options) as proxy:
            hub = proxy.server.hub
            hub.open_call("CA2", CallInfo("CA2"))
            hub.end_call("CA2", CALL_ENDED)  # the store stays locked: lost after the flush
    assert (hub.counters.transcripts_stored, hub.counters.transcripts_lost) == (0, 1)
    async with SqliteStore.opened(str(transcripts_file)) as store:
        assert await store.get_call("CA1") is not None
        assert await store.get_call("CA2") is None


async def test_a_call_sid_with_odd_characters_is_found_by_its_quoted_path(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url) as proxy:
        assert proxy.server.store is not None
        await proxy.server.store.save(finished("CA 1/é", 5_000))
        answer = await get(proxy, f"/calls/{quote('CA 1/é', safe='')}")
        assert answer.status == 200 and answer.json()["callSid"] == "CA 1/é"
        cursor = encode_cursor(Cursor(6_000, "CA"))
        assert [
            c["callSid"] for c in (await get(proxy, f"/calls?before={cursor}")).json()["calls"]
        ] == ["CA 1/é"]
