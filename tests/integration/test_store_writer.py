"""The writer against real stores: a call's finals reach the store while it runs, nothing is
lost while the store is away mid-call, what overflows the queue is counted and the call
marked truncated; and a proxy killed mid-call leaves the transcript so far, readable."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from pathlib import Path

import psycopg
from websockets.asyncio.client import connect

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import CALL_ENDED, Hub
from twilio_dg_proxy.store import open_store
from twilio_dg_proxy.store.base import TranscriptStore
from twilio_dg_proxy.store.sqlite import SqliteStore
from twilio_dg_proxy.store.writer import StoreWriter
from twilio_dg_proxy.transcripts import Recorder
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern
from twilio_dg_proxy.viewer_protocol import CallInfo

from ..timing import S
from .helpers import ServerProcess, running_proxy, until
from .test_store import final
from .test_transcripts_api import FAST_RETRY, get, locked

INFO = CallInfo("CA1", {"From": "+15550100"}, ("inbound", "outbound"), 1_000)


def with_text(sent: list[str]) -> list[str]:
    """The finals with text among Deepgram's messages: what a transcript keeps."""
    return [
        text
        for text in sent
        if (m := json.loads(text)).get("type") == "Results"
        and m["is_final"]
        and m["channel"]["alternatives"][0]["transcript"].strip()
    ]


async def stored_finals(store_env: dict[str, str], call_sid: str) -> list[str]:
    """The finals the store holds for `call_sid`, live or not, read by SQL of our own."""
    sql = "SELECT text FROM finals WHERE call_sid = {} ORDER BY seq"
    if "TRANSCRIPTS_FILE" in store_env:

        def read() -> list[str]:
            with closing(sqlite3.connect(store_env["TRANSCRIPTS_FILE"])) as connection:
                return [t for (t,) in connection.execute(sql.format("?"), (call_sid,))]

        return await asyncio.to_thread(read)
    async with await psycopg.AsyncConnection.connect(store_env["DATABASE_URL"]) as postgres:
        cursor = await postgres.execute(sql.format("%s"), (call_sid,))
        return [row[0] for row in await cursor.fetchall()]


@asynccontextmanager
async def writing(
    store: TranscriptStore, max_bytes: int = 1 << 20
) -> AsyncIterator[tuple[Hub, StoreWriter]]:
    """A hub whose calls a recorder hands to a running writer (quick batches and retries)."""
    hub = Hub(queue_limit=10)
    writer = StoreWriter(
        store,
        hub.counters,
        max_bytes=max_bytes,
        retention_days=30.0,
        retry=FAST_RETRY,
        batch_delay_s=0.05,
    )
    hub.sinks.append(Recorder(lambda: 9_000, [writer]))
    async with writer.running():
        yield hub, writer


async def test_finals_reach_the_store_while_the_call_runs(store_env: dict[str, str]) -> None:
    async with open_store(Settings.from_env(store_env)) as store, writing(store) as (hub, _):
        hub.open_call("CA1", INFO)
        sent = [final(f"word {i}", i % 2, float(i)) for i in range(5)]
        for text in sent:
            hub.publish("CA1", text)
        async with asyncio.timeout(5 * S):
            while await stored_finals(store_env, "CA1") != sent:  # noqa: ASYNC110  # polls SQL
                await asyncio.sleep(0.02)
        assert await store.get_call("CA1") is None  # live: not served yet
        hub.end_call("CA1", CALL_ENDED)
        await until(lambda: hub.counters.transcripts_stored == 1)
        stored = await store.get_call("CA1")
        assert stored is not None and stored.finals == tuple(sent) and not stored.truncated


async def test_sqlite_locked_mid_call_then_back_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    async with SqliteStore.opened(str(path)) as store, writing(store) as (hub, writer):
        hub.open_call("CA1", INFO)
        sent = [final(f"word {i}", i % 2, float(i)) for i in range(40)]
        for text in sent[:10]:
            hub.publish("CA1", text)
        await until(lambda: writer.health()["queued"] == 0)
        with locked(path):
            for text in sent[10:]:
                hub.publish("CA1", text)
            await until(lambda: hub.counters.store_errors >= 2)
            hub.end_call("CA1", CALL_ENDED)
            assert writer.health()["reachable"] is False
        await until(lambda: hub.counters.transcripts_stored == 1)
        stored = await store.get_call("CA1")
        assert stored is not None and stored.finals == tuple(sent) and not stored.truncated
        assert (hub.counters.transcripts_lost, hub.counters.transcript_finals_dropped) == (0, 0)


async def test_beyond_the_queue_the_oldest_finals_are_dropped_counted_and_truncate_the_call(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite3"
    sent = [final(f"word {i}", i % 2, float(i)) for i in range(60)]
    size = len(sent[0]) + 200  # a final and its overhead (EVENT_OVERHEAD)
    async with (
        SqliteStore.opened(str(path)) as store,
        writing(store, max_bytes=20 * size) as (hub, writer),
    ):
        hub.open_call("CA1", INFO)
        hub.open_call("CA2", CallInfo("CA2"))
        await until(lambda: writer.health()["queued"] == 0)  # both started in the store
        with locked(path):
            hub.publish("CA1", sent[0])
            await until(lambda: hub.counters.store_errors >= 1)  # being written, retried
            for text in sent[1:]:
                hub.publish("CA1", text)
            hub.end_call("CA1", CALL_ENDED)
            hub.end_call("CA2", CALL_ENDED)
            dropped = hub.counters.transcript_finals_dropped
            assert dropped >= 39  # beyond 20 finals' worth waiting
        await until(lambda: hub.counters.transcripts_stored == 2)
        stored = await store.get_call("CA1")
        assert stored is not None and stored.truncated
        # The one in flight, then the latest, in order.
        assert stored.finals == (sent[0], *sent[1 + dropped :])
        assert hub.counters.transcripts_lost == 0
        other = await store.get_call("CA2")
        assert other is not None and not other.truncated


async def test_a_proxy_killed_mid_call_leaves_its_transcript_so_far_readable(
    tmp_path: Path,
) -> None:
    path = tmp_path / "t.sqlite3"
    env = {"TRANSCRIPTS_FILE": str(path)}
    call = SimulatedCall(custom_parameters={"From": "+15550100"})
    audio = {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with ServerProcess.started(DEEPGRAM_URL=deepgram.url, **env) as server:
            url = f"ws://127.0.0.1:{server.port}"
            async with connect(f"{url}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                for _, message in call.frames(audio):  # type: ignore[arg-type]
                    await twilio.send(message)
                # Deepgram has answered all the audio: its finals reach the file, the call
                # still running (no `stop`).
                await until(lambda: bool(deepgram.streams))
                expected: list[str] = []
                async with asyncio.timeout(10 * S):
                    while not expected or await stored_finals(env, call.call_sid) != expected:
                        await asyncio.sleep(0.05)
                        expected = with_text(deepgram.streams[0].sent)
                server.process.send_signal(signal.SIGKILL)
                assert await server.process.wait() == -signal.SIGKILL
        assert len(expected) >= 10
        # A second proxy on the same file: the call is ended, interrupted, and served.
        async with running_proxy(deepgram.url, **env) as proxy:
            summary = (await get(proxy, f"/calls/{call.call_sid}")).json()
            assert summary["endCode"] == 1006
            assert summary["endReason"] == "interrupted: the proxy stopped"
            assert summary["customParameters"] == {"From": "+15550100"}
            assert summary["endedAt"] > summary["startedAt"]
            stored = (await get(proxy, f"/calls/{call.call_sid}/transcript")).json()
            assert stored["results"] == [json.loads(t) for t in expected]
            listed = (await get(proxy, "/calls")).json()
            assert [c["callSid"] for c in listed["calls"]] == [call.call_sid]
