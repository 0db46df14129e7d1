"""Deepgram outages mid-call: the proxy reopens the stream and loses no audio."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence

import pytest

from twilio_dg_proxy.deepgram import Pings
from twilio_dg_proxy.deepgram_protocol import REPLAY_BURST_S
from twilio_dg_proxy.engine.synthetic import SyntheticStream
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
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

SECOND = 8000  # mu-law bytes per second per track


def both_tracks(seconds: float) -> dict[str, bytes]:
    n = int(seconds * SECOND)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


def interleaved(audio: dict[str, bytes]) -> bytes:
    out = bytearray(2 * len(audio["inbound"]))
    out[0::2], out[1::2] = audio["inbound"], audio["outbound"]
    return bytes(out)


def assert_one_timeline(
    transcript: Sequence[str], streams: Sequence[SyntheticStream], produced: int
) -> None:
    """What the watcher got is what each stream sent, in order, its times moved to where
    the stream's audio lies on the call's timeline (the last stream carries the call's
    last `len(audio)` bytes, the one before it the bytes before those, and so on; the first
    starts at zero)."""
    expected = []
    starts = [0] + [
        produced - sum(s.audio_bytes for s in streams[i:]) for i in range(1, len(streams))
    ]
    for stream, start in zip(streams, starts, strict=True):
        offset = start / (2 * SECOND)
        for text in stream.sent:
            message = json.loads(text)
            if message["type"] == "Results" and offset:
                message["start"] = round(message["start"] + offset, 6)
                for word in message["channel"]["alternatives"][0]["words"]:
                    word["start"] = round(word["start"] + offset, 6)
                    word["end"] = round(word["end"] + offset, 6)
            expected.append(message)
    assert [json.loads(t) for t in transcript] == expected
    for channel in (0, 1):
        finals = [
            r for r in results(transcript) if r["is_final"] and r["channel_index"][0] == channel
        ]
        starts = [r["start"] for r in finals]
        assert starts == sorted(starts)  # one timeline: it never restarts at zero


async def call_with_fault(
    proxy: RunningProxy, deepgram: FakeDeepgram, fault: str, seconds: float = 1.6
) -> tuple[list[str], bytes]:
    """A call whose first Deepgram stream suffers `fault` once it has 0.4 s of audio."""
    call = SimulatedCall()
    audio = both_tracks(seconds)
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        first = await deepgram.next_stream()
        sending = asyncio.create_task(twilio.send_all(call.frames(audio), speed=2))  # type: ignore[arg-type]
        await until(lambda: first.audio_bytes >= 2 * SECOND * 0.4)
        if fault == "drop":
            await deepgram.drop(first)
        elif fault == "cut":
            deepgram.cut(first)
        else:
            deepgram.stall(first)
        await sending
        await twilio.stop()
        transcript = await watcher.transcript(within=20 * S)
    return transcript, interleaved(audio)


@pytest.mark.parametrize("fault", ["drop", "cut", "stall"])
async def test_a_failed_stream_is_reopened_and_no_audio_or_time_is_lost(fault: str) -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, {"deepgram_pings": Pings(0.2, 0.2)}) as proxy:
            transcript, produced = await call_with_fault(proxy, deepgram, fault)
            assert proxy.server.hub.counters.deepgram_reconnects == 1
    assert len(deepgram.streams) == 2
    if fault != "stall":
        assert b"".join(bytes(s.audio) for s in deepgram.streams) == produced
    else:
        # What went into the hung stream's socket before the pings timed out is lost with
        # it; the new stream carries on exactly where the audio stands.
        assert deepgram.streams[1].audio and produced.endswith(deepgram.streams[1].audio)
    assert_one_timeline(transcript, deepgram.streams, len(produced))
    assert json.loads(transcript[-1])["type"] == "Metadata"


async def test_a_chunk_whose_send_fails_is_sent_first_on_the_next_stream() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            audio = both_tracks(1.0)
            frames = call.frames(audio)  # type: ignore[arg-type]
            produced = interleaved(audio)
            half = len(produced) // 2  # 0.5 s: five whole chunks
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                await twilio.send_all(frames[: len(frames) // 2])
                await until(lambda: first.audio_bytes == half)
                # Deepgram closes the stream; the proxy answers, but its connection stays
                # open, so the next chunk's send fails when it closes (the proxy's close
                # timeout): the chunk was taken and not sent.
                await deepgram.drop_and_hold(first)
                await twilio.send_all(frames[len(frames) // 2 :])
                second = await deepgram.next_stream(timeout=15 * S)
                await deepgram.release(first)
                await twilio.stop()
                transcript = await watcher.transcript(within=20 * S)
            assert proxy.server.hub.counters.deepgram_reconnects == 1
    assert deepgram.streams == [first, second]
    assert bytes(first.audio) == produced[:half]
    assert bytes(second.audio) == produced[half:]  # the failed chunk first, then the rest
    assert_one_timeline(transcript, deepgram.streams, len(produced))


async def test_retryable_refusals_are_retried_with_backoff() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            deepgram.refuse_next()  # the first stream opens
            call = SimulatedCall()
            audio = both_tracks(1.0)
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                deepgram.refuse_next(503, 429)
                await twilio.send_all(call.frames(audio)[:10])  # type: ignore[arg-type]
                await until(lambda: first.audio_bytes > 0)
                await deepgram.drop(first)
                await twilio.send_all(call.frames(audio)[10:], speed=4)  # type: ignore[arg-type]
                await twilio.stop()
                transcript = await watcher.transcript(within=20 * S)
    assert [r.status for r in deepgram.refusals] == [503, 429]
    assert b"".join(bytes(s.audio) for s in deepgram.streams) == interleaved(audio)
    assert_one_timeline(transcript, deepgram.streams, len(interleaved(audio)))


@pytest.mark.parametrize("status", [400, 401, 402, 403])
async def test_a_configuration_refusal_is_not_retried(status: int) -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                deepgram.refuse_next(status, 503)
                await twilio.send_all(call.frames(both_tracks(0.3)))  # type: ignore[arg-type]
                await until(lambda: first.audio_bytes > 0)
                await deepgram.drop(first)
                code, reason, _ = await watcher.closed()
                await twilio.ws.wait_closed()
    assert (code, twilio.ws.close_code) == (1014, 1014)
    assert f"HTTP {status}" in reason
    assert len(deepgram.refusals) == 1  # not retried


async def test_a_permanent_outage_ends_the_call_cleanly_after_the_retry_budget() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, DEEPGRAM_RETRY_ATTEMPTS="3") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                deepgram.refuse_next(*[503] * 10)
                await twilio.send_all(call.frames(both_tracks(0.5)))  # type: ignore[arg-type]
                await until(lambda: len(first.sent) >= 4)
                await deepgram.drop(first)
                code, reason, messages = await watcher.closed()
                await twilio.ws.wait_closed()
    assert code == 1014 and "503" in reason
    assert messages == first.sent  # everything transcribed before the outage was delivered
    assert len(deepgram.refusals) == 3


async def test_audio_beyond_the_buffer_during_an_outage_is_dropped_and_counted() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, AUDIO_BUFFER_SECONDS="1") as proxy:
            call = SimulatedCall()
            audio = both_tracks(3.0)
            frames = call.frames(audio)  # type: ignore[arg-type]
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                deepgram.refuse_next(*[503] * 3)  # ~1 to 2 s of backoff
                await twilio.send_all(frames[:20])
                await until(lambda: first.audio_bytes > 0)
                await deepgram.drop(first)
                await twilio.send_all(frames[20:], speed=1)
                await twilio.stop()
                await watcher.transcript(within=20 * S)
            dropped = proxy.server.hub.counters.audio_dropped_bytes
    received = sum(s.audio_bytes for s in deepgram.streams)
    assert dropped > 0
    assert received + dropped == len(interleaved(audio))


async def test_a_stream_failing_while_it_paces_a_backlog_loses_no_audio() -> None:
    """A reopened stream sends its backlog no faster than Deepgram takes it, waiting between
    chunks; if it fails during such a wait, the chunk it had taken goes first on the next."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            audio = both_tracks(4.0)
            frames = call.frames(audio)  # type: ignore[arg-type]
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                first = await deepgram.next_stream()
                await twilio.send_all(frames[:10])
                await until(lambda: first.audio_bytes > 0)
                await deepgram.drop(first)
                await twilio.send_all(frames[10:])  # at once: a backlog of nearly 4 s
                second = await deepgram.next_stream(timeout=15 * S)
                # Past its first REPLAY_BURST_S, the stream waits before each chunk.
                paced = 2 * SECOND * (REPLAY_BURST_S + 0.3)
                await until(lambda: second.audio_bytes >= paced)
                await deepgram.drop(second)
                third = await deepgram.next_stream(timeout=15 * S)
                await twilio.stop()
                await watcher.transcript(within=20 * S)
            assert proxy.server.hub.counters.deepgram_reconnects == 2
    assert deepgram.streams == [first, second, third]
    assert b"".join(bytes(s.audio) for s in deepgram.streams) == interleaved(audio)
