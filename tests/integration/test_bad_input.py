"""Hostile or broken input, one row per case: the affected connection gets a clear answer
(a close code and reason, or the input is ignored and counted) while a healthy call running
at the same time is untouched."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from websockets.asyncio.client import connect

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from .helpers import (
    RunningProxy,
    TwilioPeer,
    Watcher,
    both_receive_modes,
    results,
    running_proxy,
    until,
)

pytestmark = both_receive_modes

FRAME = pattern("inbound", 160)


class TextBytes(bytes):
    """Bytes to send as a text message, unchecked (a peer may send invalid UTF-8)."""


@dataclass(frozen=True)
class Case:
    """Messages sent after `connected` (and `start`, unless `before_start`), and the outcome:
    a close `code` with `reason` in its reason, or (code None) a normal call end with
    `counter` raised by `at_least`. `recv_reason` replaces `reason` with DIRECT_RECEIVE off
    where websockets' recv() refuses the message itself, in its own words (same code)."""

    name: str
    messages: Callable[[SimulatedCall], list[str | bytes]]
    code: int | None
    reason: str = ""
    counter: str = ""
    at_least: int = 1
    before_start: bool = False
    recv_reason: str | None = None


def media(call: SimulatedCall, *timestamps: int, payload: bytes = FRAME) -> list[str | bytes]:
    return [call.media("inbound", ts, payload) for ts in timestamps]


def edited(call: SimulatedCall, change: Callable[[dict[str, object]], None]) -> list[str | bytes]:
    message = json.loads(call.media("inbound", 0, FRAME))
    change(message)
    return [json.dumps(message)]


TWILIO_CASES = [
    Case("invalid JSON", lambda c: ["{not json"], 1008, "invalid JSON"),
    Case("JSON that is not an object", lambda c: ["[1, 2]"], 1008, "expected a JSON object"),
    Case("no event", lambda c: ['{"sequenceNumber": "3"}'], 1008, "event: missing"),
    Case(
        "unknown event",
        lambda c: ['{"event": "new", "sequenceNumber": "3"}'],
        None,
        counter="unknown_events",
    ),
    Case(
        "media before start", lambda c: media(c, 0), 1008, "media before start", before_start=True
    ),
    Case("a second start", lambda c: [c.start()], 1008, "second start"),
    Case(
        "a timestamp that is not a string of digits",
        lambda c: edited(c, lambda m: m["media"].update(timestamp=[1])),  # type: ignore[attr-defined]
        1008,
        "media.timestamp",
    ),
    Case(
        "invalid base64",
        lambda c: edited(c, lambda m: m["media"].update(payload="%%%")),  # type: ignore[attr-defined]
        1008,
        "media.payload",
    ),
    Case(
        "media on a track the start did not announce",
        lambda c: [c.media("outbound", 0, FRAME)],
        1008,
        "not in start.tracks",
    ),
    Case("a binary frame", lambda c: [b"\x00\x01"], 1003, "binary"),
    Case(
        "text that is not UTF-8",
        lambda c: [TextBytes(b'{"event": "media\xff"}')],
        1007,
        "not valid UTF-8",
        recv_reason="invalid start byte at position",
    ),
    Case("an oversized message", lambda c: ["x" * 70_000], 1009),
    Case(
        "payloads that are not 160 bytes",
        lambda c: media(c, 0, 20, payload=FRAME[:7]),
        None,
        counter="calls",
    ),
    Case(
        "timestamps going backwards",
        lambda c: media(c, 0, 20, 40, 60, 80, 100, 0),
        None,
        counter="late_packets",
    ),
    Case(
        "a repeated timestamp",
        lambda c: media(c, *range(0, 200, 20), 180),
        None,
        counter="late_packets",
    ),
    Case(
        "a jump of hours",
        lambda c: media(c, 0, 3_600_000, 3_600_020),
        None,
        counter="discontinuities",
    ),
]


@pytest.fixture
async def proxy_with_a_healthy_call() -> AsyncIterator[
    tuple[RunningProxy, asyncio.Task[list[str]]]
]:
    """A proxy with one well-behaved call in progress (1 s of audio in real time)."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, CHUNK_MS="20") as proxy:
            call = SimulatedCall()
            n = 8000
            audio = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}

            async def healthy() -> list[str]:
                async with TwilioPeer.started(proxy, call) as twilio:
                    watcher = await Watcher.join(proxy, call.call_sid)
                    await twilio.send_all(call.frames(audio), speed=1)  # type: ignore[arg-type]
                    await twilio.stop()
                    return await watcher.transcript()

            task = asyncio.create_task(healthy())
            await until(lambda: len(proxy.server.hub.active_calls()) == 1)
            yield proxy, task
            transcript = await task
            finals = [r for r in results(transcript) if r["is_final"]]
            assert len(finals) == 20  # 1 s x 10 windows/s x 2 channels: all of it


@pytest.mark.parametrize("case", TWILIO_CASES, ids=[c.name for c in TWILIO_CASES])
async def test_bad_twilio_input(
    proxy_with_a_healthy_call: tuple[RunningProxy, asyncio.Task[list[str]]],
    case: Case,
    direct_receive: str,
) -> None:
    proxy, healthy = proxy_with_a_healthy_call
    counters = proxy.server.hub.counters
    before = getattr(counters, case.counter) if case.counter else 0
    call = SimulatedCall(tracks=("inbound",))
    async with connect(proxy.twilio_url, proxy=None) as ws:
        await ws.send(call.connected())
        if not case.before_start:
            await ws.send(call.start())
        for message in case.messages(call):
            await ws.send(message, text=isinstance(message, TextBytes) or None)
        if case.code is None:
            await ws.send(call.stop())
        await ws.wait_closed()
    if case.code is None:
        assert ws.close_code == 1000
        await until(lambda: getattr(counters, case.counter) >= before + case.at_least)
    else:
        assert ws.close_code == case.code, ws.close_reason
        reason = case.reason
        if direct_receive == "false" and case.recv_reason is not None:
            reason = case.recv_reason
        assert reason in (ws.close_reason or "")
    assert not healthy.done()  # still streaming: untouched


CLIENT_CASES = [
    ("garbage instead of a callSid", "\x00garbage", 1008, "unknown callSid"),
    ("binary instead of a callSid", b"CA00", 1008, "expected a callSid"),
    ("a huge message", "x" * 10_000, 1009, ""),
]


@pytest.mark.parametrize(
    ("name", "message", "code", "reason"), CLIENT_CASES, ids=[c[0] for c in CLIENT_CASES]
)
async def test_bad_client_input(
    proxy_with_a_healthy_call: tuple[RunningProxy, asyncio.Task[list[str]]],
    name: str,
    message: str | bytes,
    code: int,
    reason: str,
) -> None:
    proxy, healthy = proxy_with_a_healthy_call
    async with connect(proxy.client_url, proxy=None) as ws:
        await ws.recv()
        await ws.send(message)
        await ws.wait_closed()
    assert ws.close_code == code and reason in (ws.close_reason or "")
    assert not healthy.done()


async def test_a_subscribed_client_sending_garbage_keeps_its_feed(
    proxy_with_a_healthy_call: tuple[RunningProxy, asyncio.Task[list[str]]],
) -> None:
    proxy, healthy = proxy_with_a_healthy_call
    [call_sid] = proxy.server.hub.active_calls()
    watcher = await Watcher.join(proxy, call_sid)
    await watcher.ws.send("garbage")
    await watcher.ws.send(b"\xff\x00")
    assert len(results(await watcher.transcript())) >= 10
    await healthy


async def test_thousands_of_connections_leak_no_tasks_or_memory() -> None:
    async with FakeDeepgram(result_ms=100, record=False) as deepgram:
        async with running_proxy(deepgram.url) as proxy:

            async def cycle(n: int) -> None:
                for _ in range(n):
                    async with connect(proxy.client_url, proxy=None) as ws:
                        await ws.recv()
                call = SimulatedCall()
                async with TwilioPeer.started(proxy, call) as twilio:
                    await twilio.send_all(
                        call.frames({"inbound": FRAME * 5, "outbound": FRAME * 5})
                    )
                    await twilio.stop()

            await cycle(50)  # warm up caches and pools
            gc.collect()
            tasks = len(asyncio.all_tasks())
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for _ in range(20):
                await cycle(100)  # 2,000 clients and 20 calls
            await until(
                lambda: len(asyncio.all_tasks()) <= tasks and not proxy.server.hub.active_calls()
            )
            gc.collect()
            grown = sum(
                s.size_diff for s in tracemalloc.take_snapshot().compare_to(before, "filename")
            )
            tracemalloc.stop()
    assert grown < 256 * 1024, f"{grown} bytes still allocated after 2,000 connections"
