"""Calls end to end over loopback: simulated Twilio → proxy → fake Deepgram → real clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import FRAME_BYTES, SILENCE, SimulatedCall, pattern

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


async def test_two_calls_with_three_clients_each_get_every_transcript_in_order(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    calls = [SimulatedCall(), SimulatedCall()]
    # Each call says something else, so the Deepgram stream that heard a call is known by
    # its audio.
    n = SECOND
    audio = [
        {"inbound": pattern("inbound", n, offset=k), "outbound": pattern("outbound", n, offset=k)}
        for k in (0, 50)
    ]
    async with contextlib.AsyncExitStack() as stack:
        # Both calls are live before anyone chooses one.
        peers = [await stack.enter_async_context(TwilioPeer.started(proxy, c)) for c in calls]
        watchers = [[await Watcher.join(proxy, c.call_sid) for _ in range(3)] for c in calls]
        listed = sorted(c.call_sid for c in calls)
        assert all(sorted(w.listed) == listed for group in watchers for w in group)

        async def run_call(twilio: TwilioPeer, tracks: dict[str, bytes]) -> None:
            await twilio.send_all(twilio.call.frames(tracks))  # type: ignore[arg-type]
            await twilio.stop()

        await asyncio.gather(*(run_call(t, a) for t, a in zip(peers, audio, strict=True)))
        seen = [await asyncio.gather(*(w.transcript() for w in group)) for group in watchers]
    assert len(deepgram.streams) == 2
    for tracks, transcripts in zip(audio, seen, strict=True):
        # The stream that heard this call's audio, and what it sent for it.
        (stream,) = [s for s in deepgram.streams if bytes(s.audio[0::2]) == tracks["inbound"]]
        assert bytes(stream.audio[1::2]) == tracks["outbound"]
        # Each client got exactly what Deepgram sent for its own call, in order, verbatim.
        for transcript in transcripts:
            assert transcript == stream.sent
        assert len(results(transcripts[0])) >= 20  # 10 windows x 2 channels
    assert seen[0][0] != seen[1][0]
    assert proxy.server.hub.active_calls() == []


async def test_deepgram_hears_both_tracks_interleaved_with_silence_for_lost_packets(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio = both_tracks(1.0)
    lost = {"inbound": {3, 4, 20}, "outbound": {0, 49}}
    async with TwilioPeer.started(proxy, call) as twilio:
        await twilio.send_all(call.frames(audio, drop=lost))  # type: ignore[arg-type]
        await twilio.stop()
    stream = deepgram.streams[0]
    await asyncio.wait_for(stream.closed.wait(), 5 * S)
    expected = {}
    for track, data in audio.items():
        frames = bytearray(data)
        for i in lost[track]:
            frames[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] = bytes([SILENCE]) * FRAME_BYTES
        expected[track] = bytes(frames)
    assert stream.params["channels"] == "2" and stream.params["multichannel"] == "true"
    assert bytes(stream.audio[0::2]) == expected["inbound"]
    assert bytes(stream.audio[1::2]) == expected["outbound"]
    assert stream.controls[-1] == "CloseStream"
    assert stream.empty_frames == 0


async def test_one_track_stream_is_sent_as_mono(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall(tracks=("inbound",))
    audio = {"inbound": pattern("inbound", SECOND // 2)}
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(audio))  # type: ignore[arg-type]
        await twilio.stop()
        transcript = await watcher.transcript()
    stream = deepgram.streams[0]
    assert stream.params["channels"] == "1" and "multichannel" not in stream.params
    assert bytes(stream.audio) == audio["inbound"]
    assert {tuple(r["channel_index"]) for r in results(transcript)} == {(0, 1)}


async def test_callee_answering_after_deepgrams_idle_timeout_keeps_the_stream() -> None:
    async with FakeDeepgram(result_ms=100, idle_timeout_s=0.5) as deepgram:
        async with running_proxy(deepgram.url, CHUNK_MS="40") as proxy:
            call = SimulatedCall()
            audio = both_tracks(1.5)
            audio["outbound"] = audio["outbound"][: SECOND // 4]  # answers 1.25 s in
            messages = call.frames(audio, start_ms={"outbound": 1250})  # type: ignore[arg-type]
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                await twilio.send_all(messages, speed=1)
                await twilio.stop()
                transcript = await watcher.transcript()
        stream = deepgram.streams[0]
        assert stream.close_code == 1000, stream.close_reason
        assert stream.audio[1::2].startswith(bytes([SILENCE]) * 9000)
        assert bytes(stream.audio[1::2]).rstrip(bytes([SILENCE])).endswith(audio["outbound"])
        right = [r for r in results(transcript) if r["channel_index"] == [1, 2]]
        assert any(r["channel"]["alternatives"][0]["transcript"] for r in right)


async def test_keepalive_flows_while_twilio_sends_nothing() -> None:
    async with FakeDeepgram(result_ms=100, idle_timeout_s=0.6 * S) as deepgram:
        async with running_proxy(deepgram.url, KEEPALIVE_INTERVAL="0.2") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                await twilio.send_all(call.frames(both_tracks(0.2)))  # type: ignore[arg-type]
                await asyncio.sleep(1.0 * S)  # a stalled Twilio: longer than the idle timeout
                await twilio.send_all(call.frames(both_tracks(0.2)))  # type: ignore[arg-type]
                await twilio.stop()
        stream = deepgram.streams[0]
        await asyncio.wait_for(stream.closed.wait(), 5 * S)
        assert stream.controls.count("KeepAlive") >= 3
        assert stream.close_code == 1000


async def test_end_of_call_forwards_the_last_results_then_close(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(both_tracks(0.25)))  # type: ignore[arg-type]
        await twilio.stop()
        transcript = await watcher.transcript()
    # The partial window after the last full one is only transcribed after CloseStream.
    assert json.loads(transcript[-1])["type"] == "Metadata"
    ends = [r["start"] + r["duration"] for r in results(transcript)]
    assert max(ends) == pytest.approx(0.26, abs=0.011)


async def test_twilio_closing_without_stop_still_ends_the_call_cleanly(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(both_tracks(0.3)))  # type: ignore[arg-type]
        await twilio.ws.close()
        transcript = await watcher.transcript()
    assert json.loads(transcript[-1])["type"] == "Metadata"
    assert deepgram.streams[0].controls[-1] == "CloseStream"


async def test_nothing_of_a_call_survives_its_end(proxy: RunningProxy) -> None:
    baseline = len(asyncio.all_tasks())
    for _ in range(5):
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            watcher = await Watcher.join(proxy, call.call_sid)
            await twilio.send_all(call.frames(both_tracks(0.1)))  # type: ignore[arg-type]
            await twilio.stop()
            await watcher.transcript()
    await until(lambda: len(asyncio.all_tasks()) <= baseline)
    assert proxy.server.hub.active_calls() == []
    assert proxy.server.hub.subscriber_count() == 0


async def test_dtmf_mark_and_unknown_events_do_not_disturb_the_call(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    call = SimulatedCall()
    caplog.set_level(logging.DEBUG, logger="twilio_dg_proxy")
    sid = call.stream_sid
    extra = [
        {"event": "dtmf", "dtmf": {"track": "inbound_track", "digit": "5"}},
        {"event": "mark", "mark": {"name": "m"}},
        {"event": "somethingNew", "somethingNew": {}},
        {"event": "somethingNew", "somethingNew": {}},
    ]
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        for n, message in enumerate(extra, start=3):
            await twilio.ws.send(json.dumps(message | {"sequenceNumber": str(n), "streamSid": sid}))
        await twilio.send_all(call.frames(both_tracks(0.2)))  # type: ignore[arg-type]
        await twilio.stop()
        transcript = await watcher.transcript()
    assert twilio.ws.close_code == 1000
    assert len(results(transcript)) >= 4
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"[{call.call_sid}] ignoring unknown Twilio event 'somethingNew'"]
    digits = [r for r in caplog.records if "DTMF 5" in r.getMessage()]
    assert [r.levelno for r in digits] == [logging.DEBUG]  # digits can be PINs: never at INFO
