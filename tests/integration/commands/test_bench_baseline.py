"""`bench --baseline`: the tutorial baseline's own protocol behaviour (a simulated call
through it, watched the websocat way), and one short real run of both sides."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve

from twilio_dg_proxy.commands.bench.tutorial_baseline import BUFFER_SIZE, Baseline, deepgram_url
from twilio_dg_proxy.engine.synthetic import SyntheticEngine
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ...timing import S
from ..helpers import until

FRAMES = 53  # 1.06 s per track: two whole 400 ms buffers and a rest


async def test_a_call_through_the_baseline_reaches_deepgram_and_its_watcher() -> None:
    """Twilio's messages in, the stereo audio at Deepgram (the rest of the buffers too), and
    a watcher that sees the call list, every Deepgram message verbatim, then `close`."""
    async with SyntheticEngine(result_ms=250) as fake:
        baseline = Baseline(deepgram_url(fake.url, "interim_results=false"))
        async with serve(
            baseline.router, "127.0.0.1", 0, process_request=baseline.health
        ) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            call = SimulatedCall()
            inbound = pattern("inbound", FRAMES * 160)
            outbound = pattern("outbound", FRAMES * 160)
            async with connect(f"ws://127.0.0.1:{port}/twilio") as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                stream = await fake.next_stream(timeout=5 * S)
                await until(lambda: call.call_sid in baseline.subscribers)
                async with connect(f"ws://127.0.0.1:{port}/client") as watcher:
                    assert json.loads(await watcher.recv()) == [call.call_sid]
                    await watcher.send(f" {call.call_sid}\n")
                    await until(lambda: bool(baseline.subscribers[call.call_sid]))
                    for _, message in call.frames({"inbound": inbound, "outbound": outbound}):
                        await twilio.send(message)
                    await twilio.send(call.stop())
                    received = [message async for message in watcher]
                    assert watcher.close_code == 1000
                await asyncio.wait_for(stream.closed.wait(), 5 * S)
    assert stream.params["channels"] == "2" and stream.params["multichannel"] == "true"
    assert stream.controls == ["CloseStream"] and stream.empty_frames == 0
    # Two whole buffers while the call ran, then the rest at its end.
    assert [n for _, n in stream.audio_log] == [2 * BUFFER_SIZE, 4 * BUFFER_SIZE, 2 * FRAMES * 160]
    assert stream.audio[0::2] == inbound and stream.audio[1::2] == outbound
    assert received[:-1] == stream.sent and received[-1] == "close"
    assert json.loads(received[-2])["type"] == "Metadata"
    assert baseline.subscribers == {}


async def test_an_unknown_call_sid_is_refused_with_the_call_list_first() -> None:
    baseline = Baseline("ws://127.0.0.1:9/v1/listen")
    async with serve(baseline.router, "127.0.0.1", 0, process_request=baseline.health) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/client") as watcher:
            assert json.loads(await watcher.recv()) == []
            await watcher.send("CAnope")
            assert [message async for message in watcher] == []
            assert watcher.close_reason == "unknown callSid"


def test_bench_baseline_measures_both_sides_and_reports_the_ratios() -> None:
    """A short real run of both, as users run it: both complete, and every ratio is there.
    What the ratios are is the benchmark's figure, not this test's."""
    done = subprocess.run(
        [sys.executable, "-m", "twilio_dg_proxy", "bench"]
        + ["-n", "3", "-d", "2", "--warmup", "0.5", "--baseline", "--json"],
        capture_output=True,
        text=True,
        timeout=180 * S,
        check=False,
    )
    assert done.returncode in (0, 1), done.stderr[-2000:]
    data = json.loads(done.stdout.strip().splitlines()[-1])
    (only,) = data["rounds"]
    for side in ("proxy", "baseline"):
        assert only[side]["complete"] and only[side]["calls_exact"] == 3, only[side]
    assert only["baseline"]["chunk_ms"] == 400
    assert "tutorial baseline" in only["baseline"]["placement"]
    assert all(isinstance(value, float) for value in only["ratios"].values()), only["ratios"]
    assert "side by side" in done.stdout and "proxy / baseline" in done.stdout
