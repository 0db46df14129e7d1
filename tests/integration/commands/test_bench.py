"""The benchmark: its arithmetic (pure), its wire helpers, and one small real run."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from twilio_dg_proxy.__main__ import build_parser
from twilio_dg_proxy.commands.bench.baseline import Side, run_side
from twilio_dg_proxy.commands.bench.load import BenchOptions, run_bench
from twilio_dg_proxy.commands.bench.measure import (
    coverage_latencies,
    expected_stereo_sha256,
    fake_stamp,
    held_real_time,
    next_sweep_size,
    percentile,
    summarize,
    top_frames,
    window_range,
)
from twilio_dg_proxy.commands.bench.procfs import busy_seconds, cpu_seconds, rss_bytes
from twilio_dg_proxy.commands.bench.report import format_report
from twilio_dg_proxy.commands.bench.wire import text_frame
from twilio_dg_proxy.deepgram_server_protocol import results_message
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ...timing import S

# --- statistics -----------------------------------------------------------------------------


def test_percentiles_are_nearest_rank_values_that_were_measured() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 99) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_summary_is_in_milliseconds_and_empty_when_nothing_was_measured() -> None:
    summary = summarize([0.003, 0.001, 0.002])
    assert (summary.count, summary.p50_ms, summary.max_ms) == (3, 2.0, 3.0)
    assert summarize([]).count == 0


# --- the latency mapping --------------------------------------------------------------------


def test_a_frame_is_held_when_the_cumulative_bytes_cover_all_of_it() -> None:
    sent = [0.00, 0.02, 0.04, 0.06, 0.08]
    # Chunks of two frames (640 stereo bytes), then the rest at the end, then padding.
    log = [(0.05, 640), (0.09, 1000), (0.10, 1600), (0.20, 2000)]
    latencies = coverage_latencies(sent, log, frame_bytes=320)
    assert latencies == pytest.approx([0.05, 0.03, 0.05, 0.04, 0.02])


def test_frames_that_never_fully_arrive_get_no_latency() -> None:
    assert coverage_latencies([0.0, 0.02, 0.04], [(0.1, 319), (0.2, 700)], 320) == [
        pytest.approx(0.2),
        pytest.approx(0.18),
    ]


def test_window_range_selects_times_in_a_half_open_interval() -> None:
    times = [0.0, 1.0, 2.0, 3.0]
    assert window_range(times, 1.0, 3.0) == range(1, 3)
    assert window_range(times, 5.0, 6.0) == range(4, 4)


def test_the_fake_deepgrams_stamp_is_read_from_a_results_message() -> None:
    message = results_message(
        transcript="ch0 w1 abcdef12",
        channel=0,
        channels=2,
        start=0.25,
        duration=0.25,
        is_final=True,
        speech_final=False,
        from_finalize=False,
        request_id="r",
    )
    message["fake"] = {"sent_at": 12345.678901, "seq": 42}  # as FakeDeepgram._send stamps it
    assert fake_stamp(json.dumps(message).encode()) == (12345.678901, 42)
    assert fake_stamp(b'{"type": "Metadata"}') is None


def test_expected_stream_is_both_tracks_interleaved_inbound_first() -> None:
    inbound, outbound = pattern("inbound", 160 * 3, offset=5), pattern("outbound", 480, offset=5)
    stereo = bytes(b for pair in zip(inbound, outbound, strict=True) for b in pair)
    assert expected_stereo_sha256(5, 3) == hashlib.sha256(stereo).hexdigest()


# --- verdict and sweep ----------------------------------------------------------------------


def test_real_time_means_p99_within_chunk_plus_margin_and_nothing_lost() -> None:
    assert held_real_time(p99_added_ms=199.0, chunk_ms=100, complete=True)[0]
    assert not held_real_time(p99_added_ms=201.0, chunk_ms=100, complete=True)[0]
    assert not held_real_time(p99_added_ms=50.0, chunk_ms=100, complete=False)[0]


def test_the_sweep_doubles_until_a_failure_then_bisects() -> None:
    outcomes: dict[int, bool] = {}
    truth = 330  # the largest size that holds
    tried = []
    while (n := next_sweep_size(outcomes, start=50, limit=2000, resolution=25)) is not None:
        tried.append(n)
        outcomes[n] = n <= truth
    assert tried[:5] == [50, 100, 200, 400, 300]
    assert max(n for n, ok in outcomes.items() if ok) > truth - 25
    assert next_sweep_size({50: False}, start=50, limit=2000, resolution=25) == 25
    assert next_sweep_size({2000: True}, start=50, limit=2000, resolution=25) is None


def test_profile_summary_counts_self_samples_of_innermost_frames() -> None:
    collapsed = "m (a.py:1);parse (a.py:7) 2\nm (a.py:1);parse (a.py:8) 1\nm;send (b.py:2) 1\n"
    assert top_frames(collapsed) == [("parse (a.py)", 0.75), ("send (b.py)", 0.25)]


# --- /proc ----------------------------------------------------------------------------------


def test_proc_parsers_read_cpu_and_memory() -> None:
    stat = "42 (odd) name) S 1 42 42 0 -1 4194304 10 0 0 0 250 50 0 0 20 0 1 0 5 0 0"
    assert cpu_seconds(stat, ticks_per_second=100) == 3.0
    assert rss_bytes("Name:\tpython\nVmRSS:\t  2048 kB\nThreads:\t1\n") == 2048 * 1024
    proc_stat = "cpu  9 0 9 9 9 0 0 0 0 0\ncpu0 100 5 20 900 50 1 2 3 0 0\nintr 1\n"
    assert busy_seconds(proc_stat, ticks_per_second=100) == {0: 1.31}


# --- the wire -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 125, 126, 400, 70_000])
def test_text_frames_parse_as_masked_text_frames(size: int) -> None:
    data = bytes(ord("a") + i % 26 for i in range(size))
    reader = StreamReader()
    reader.feed_data(text_frame(data))
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as stopped:
        next(parser)
    frame = stopped.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, data)


def test_media_templates_render_what_media_would() -> None:
    call = SimulatedCall()
    template = call.media_template("outbound")
    expected = SimulatedCall(call.call_sid, call.stream_sid, call.account_sid)
    expected._sequence = 6
    assert template.render(
        sequence=7, chunk=3, timestamp_ms=40, payload_b64="AAEC"
    ) == expected.media("outbound", 40, b"\x00\x01\x02", chunk=3)
    assert json.loads(call.stop(sequence=9))["sequenceNumber"] == "9"


# --- the command ----------------------------------------------------------------------------


def test_help_states_the_real_time_criterion() -> None:
    parser, _ = build_parser("bench")
    text = parser.format_help()
    assert "CHUNK_MS + 100 ms" in text and "--sweep" in text


async def test_a_small_run_delivers_everything_with_sane_figures() -> None:
    began = time.monotonic()
    report = await run_bench(
        BenchOptions(calls=3, subscribers=2, duration_s=2.0, warmup_s=0.5, chunk_ms=100)
    )
    # How fast is the benchmark's to say, not this test's: a latency is only bounded by the
    # run it was measured in (which catches a figure in the wrong unit).
    run_ms = (time.monotonic() - began) * 1000
    assert report.complete, report
    assert report.calls_exact == 3 and report.calls_failed == 0
    assert report.audio_received == report.audio_sent > 0
    assert report.deliveries == report.expected_deliveries > 0
    # Chunking alone puts the median near half a chunk and bounds the best case.
    assert 20 < report.added.p50_ms < run_ms
    assert report.added.count == 3 * 100  # 2 s of 20 ms frames per call
    assert 0 <= report.fanout.p50_ms < run_ms and report.fanout.count > 0
    assert 0 < report.proxy_cpu_share < 1.5 and report.proxy_rss_loaded > 10_000_000
    assert 0 < report.generator_cpu_share < 1.0


@pytest.mark.parametrize("side", ["proxy", "baseline"])
async def test_tracks_arriving_apart_reach_deepgram_byte_exact_with_nothing_lost(
    side: Side,
) -> None:
    """`--arrival apart`, as Twilio times it: each track its own write, the calls in four
    phases. The proxy, and the tutorial baseline its figures are compared with, take it
    whole: every call byte-exact and complete, every result delivered. (Whether it held
    real time is a latency: the bench's to measure, not a test's to assert.)"""
    options = BenchOptions(calls=4, subscribers=2, duration_s=2.0, warmup_s=0.5, arrival="apart")
    report = await run_side(options, side)
    assert report.arrival == "apart"
    assert report.complete, report
    assert report.calls_exact == 4 and report.calls_failed == 0
    assert report.audio_received == report.audio_sent > 0
    assert report.deliveries == report.expected_deliveries > 0
    assert report.added.count == 4 * 100  # 2 s of 20 ms frames per call
    assert report.tick_lag.count == 4 * 100  # four wake-ups a tick


def test_the_command_runs_end_to_end_on_its_own_event_loop() -> None:
    """`bench` as users run it: its own process, on uvloop where installed (the in-process
    test above runs on pytest's loop)."""
    done = subprocess.run(
        [sys.executable, "-m", "twilio_dg_proxy", "bench", "-n", "2", "-d", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=120 * S,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # The verdict is there, whichever it is: whether 2 calls hold real time depends on what
    # else the machine is doing, and is the benchmark's figure, not this test's.
    assert isinstance(report["held"], bool) and report["verdict"]
    assert report["complete"] and report["calls_exact"] == 2


async def test_ping_floods_are_closed_while_the_calls_stay_complete() -> None:
    """Issue 11's flooders over the window: they ran and the proxy closed them (1008) while
    both calls kept their Deepgram stream and arrived whole. How late the audio was is the
    benchmark's figure, not this test's."""
    report = await run_bench(
        BenchOptions(calls=2, subscribers=2, duration_s=2.0, warmup_s=0.5, ping_floods=2)
    )
    floods = report.floods
    assert floods is not None and floods.flooders == 2
    assert floods.pings_sent > 0 and floods.connections >= 2
    assert floods.closes.get(1008, 0) > 0 and floods.closed_by_proxy > 0
    assert floods.proxy_control_floods is not None and floods.proxy_control_floods > 0
    assert report.complete, report
    assert report.calls_exact == 2 and report.calls_failed == 0
    assert report.deepgram_reconnects == 0 and report.deepgram_streams == 2
    assert "floods" in format_report(report)
