"""The offline engine survives its own failures: a worker process killed mid-stream is
replaced and the streams go on; more streams than `max_streams` are refused with Deepgram's
429, which the proxy retries.

One engine (two workers, at most two streams) serves the module, since starting one loads the
model; each test leaves it with no stream open.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from twilio_dg_proxy.engine.server import OfflineEngine
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from ...timing import S
from ..helpers import TwilioPeer, Watcher, running_proxy, until
from .test_offline_engine import DATA, KEY_WORDS, normalise, read_mulaw_wav, send_audio

pytestmark = pytest.mark.asyncio(loop_scope="module")

MONO = "?encoding=mulaw&sample_rate=8000&channels=1"
MAX_STREAMS = 2
SECOND = 8000  # bytes of one second of mono mu-law


@pytest.fixture(scope="module")
def callee() -> bytes:
    """The callee's channel of the sample call, as mono mu-law: "Good evening, Harbor
    restaurant. How can I help you?" in its first 5 s, "Of course. What time would you like
    to come?" later."""
    channels, audio = read_mulaw_wav(DATA / "engine_sample.wav")
    assert channels == 2
    return audio[1::2]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def engine() -> AsyncIterator[OfflineEngine]:
    # Generous bounds: a replacement worker loads the model while the machine is busy.
    async with OfflineEngine(
        workers=2, max_streams=MAX_STREAMS, idle_timeout_s=120 * S, decode_timeout_s=60 * S
    ) as started:
        yield started
    assert started.open_streams == 0


class Stream:
    """A client stream to the engine whose messages a task collects until it closes."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, str)
                self.messages.append(json.loads(message))
        except ConnectionClosed:
            pass

    def finals(self, since: int = 0) -> list[dict[str, Any]]:
        return [m for m in self.messages[since:] if m["type"] == "Results" and m["is_final"]]

    def finalized(self, since: int = 0) -> bool:
        """Whether the answer to a Finalize sent after message `since` has arrived."""
        return any(m["from_finalize"] for m in self.finals(since))

    def said(self, since: int = 0) -> set[str]:
        transcript = " ".join(
            m["channel"]["alternatives"][0]["transcript"] for m in self.finals(since)
        )
        return set(normalise(transcript))

    async def close_stream(self) -> None:
        """CloseStream, then wait for the engine to close."""
        await self.ws.send(json.dumps({"type": "CloseStream"}))
        async with asyncio.timeout(60 * S):
            await self.reader


@asynccontextmanager
async def streams(engine: OfflineEngine, count: int) -> AsyncIterator[list[Stream]]:
    opened = [Stream(await connect(engine.url + MONO, proxy=None)) for _ in range(count)]
    try:
        yield opened
    finally:
        for stream in opened:
            await stream.ws.close()
            await stream.reader
        await until(lambda: engine.open_streams == 0)


@contextmanager
def stopped(pids: frozenset[int]) -> Iterator[None]:
    """Stop processes `pids` (SIGSTOP) for the block; continue those left alive after it."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:  # the one killed
                pass


async def finalize_both(pair: list[Stream], audio: bytes) -> list[int]:
    """Send `audio` then Finalize on each stream; return where each one's new messages start."""
    marks = [len(stream.messages) for stream in pair]
    for stream in pair:
        await send_audio(stream.ws, audio)
        await stream.ws.send(json.dumps({"type": "Finalize"}))
    return marks


async def test_a_killed_worker_is_replaced_and_both_streams_go_on(
    engine: OfflineEngine, callee: bytes
) -> None:
    first_turn, rest = callee[: 5 * SECOND], callee[5 * SECOND :]
    lost_before, restarts_before = engine.stats.lost_finals, engine.worker_restarts
    async with streams(engine, 2) as pair:
        # Both streams are transcribed before anything fails.
        marks = await finalize_both(pair, first_turn)
        await until(lambda: all(s.finalized(m) for s, m in zip(pair, marks, strict=True)), 60 * S)
        assert all({"evening", "harbor"} <= s.said(m) for s, m in zip(pair, marks, strict=True))
        assert engine.decodes_in_flight == 0

        # Stopped workers hold each stream's next utterance; killing one loses exactly the
        # utterance it holds, whatever the machine's speed.
        workers = engine.worker_pids
        assert len(workers) == 2
        victim = min(workers)
        with stopped(workers):
            marks = await finalize_both(pair, first_turn)
            await until(lambda: engine.decodes_in_flight == 2, 10 * S)
            os.kill(victim, signal.SIGKILL)
            await until(lambda: engine.stats.lost_finals == lost_before + 1, 10 * S)
        await until(lambda: all(s.finalized(m) for s, m in zip(pair, marks, strict=True)), 60 * S)
        heard = sorted(
            bool({"evening", "harbor"} & s.said(m)) for s, m in zip(pair, marks, strict=True)
        )
        assert heard == [False, True]  # one stream lost its utterance, the other did not

        # Later speech on both streams is transcribed, and both end normally.
        marks = [len(stream.messages) for stream in pair]
        for stream in pair:
            await send_audio(stream.ws, rest)
        for stream in pair:
            await stream.close_stream()
        for stream, mark in zip(pair, marks, strict=True):
            assert {"course", "time", "come"} <= stream.said(mark), stream.said(mark)
            assert stream.messages[-1]["type"] == "Metadata"
            assert stream.ws.close_code == 1000
    assert engine.stats.lost_finals == lost_before + 1
    assert engine.worker_restarts == restarts_before + 1
    await until(lambda: len(engine.worker_pids) == 2, 60 * S)
    assert victim not in engine.worker_pids


async def refused(engine: OfflineEngine) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as caught:
        async with connect(engine.url + MONO, proxy=None):
            pass
    return caught.value


async def test_a_stream_beyond_max_streams_is_refused_with_429_like_deepgram(
    engine: OfflineEngine,
) -> None:
    refused_before = engine.stats.refused_streams
    async with streams(engine, MAX_STREAMS):
        response = (await refused(engine)).response
    assert response.status_code == 429
    body = json.loads(response.body)
    assert sorted(body) == ["err_code", "err_msg", "request_id"]
    assert str(MAX_STREAMS) in body["err_msg"]
    assert response.headers["dg-error"] == body["err_msg"]
    assert response.headers["dg-request-id"] == body["request_id"]
    assert response.headers["Content-Type"] == "application/json"
    assert engine.stats.refused_streams == refused_before + 1


async def test_once_a_stream_ends_a_new_one_is_accepted(engine: OfflineEngine) -> None:
    async with streams(engine, MAX_STREAMS) as full:
        assert (await refused(engine)).response.status_code == 429
        await full[0].close_stream()
        assert full[0].messages[-1]["type"] == "Metadata" and full[0].ws.close_code == 1000
        await until(lambda: engine.open_streams == MAX_STREAMS - 1)
        async with connect(engine.url + MONO, proxy=None) as ws:
            await ws.send(b"\xff" * 800)
            await ws.send(json.dumps({"type": "CloseStream"}))
            async with asyncio.timeout(10 * S):
                last = [json.loads(m) async for m in ws][-1]
        assert last["type"] == "Metadata" and ws.close_code == 1000


async def test_the_proxy_refused_with_429_retries_and_transcribes_once_a_slot_frees(
    engine: OfflineEngine,
) -> None:
    _, audio = read_mulaw_wav(DATA / "engine_sample.wav")
    refused_before = engine.stats.refused_streams
    async with streams(engine, MAX_STREAMS) as full, running_proxy(engine.url) as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            watcher = await Watcher.join(proxy, call.call_sid)
            await twilio.send_all(call.frames({"inbound": audio[0::2], "outbound": audio[1::2]}))
            # The engine is full: the proxy's stream is refused (and retried) ...
            await until(lambda: engine.stats.refused_streams > refused_before, 10 * S)
            # ... until a stream ends and frees a slot.
            await full[0].close_stream()
            await twilio.stop()
            messages = [json.loads(m) for m in await watcher.transcript(within=120 * S)]
    for channel in (0, 1):  # the caller (inbound) is channel 0
        said = set(
            normalise(
                " ".join(
                    m["channel"]["alternatives"][0]["transcript"]
                    for m in messages
                    if m["type"] == "Results" and m["is_final"] and m["channel_index"][0] == channel
                )
            )
        )
        assert KEY_WORDS[channel] <= said, (channel, said)
    assert messages[-1]["type"] == "Metadata"
