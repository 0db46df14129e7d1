"""`bench --baseline`'s pure parts: the ratios, the targets, the report and its JSON, and the
tutorial baseline's mixing and Deepgram URL."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from twilio_dg_proxy.commands.bench.baseline_report import (
    BaselineReport,
    BaselineSweep,
    Round,
    baseline_json,
    baseline_sweep_json,
    format_baseline,
    format_baseline_sweep,
    median_ratios,
    ratio,
    ratios,
    targets,
)
from twilio_dg_proxy.commands.bench.measure import Summary, net_latencies
from twilio_dg_proxy.commands.bench.report import BenchReport
from twilio_dg_proxy.commands.bench.tutorial_baseline import BUFFER_MS, deepgram_url, mix
from twilio_dg_proxy.twilio_simulator import pattern


def bench_report(
    *, calls: int = 100, cpu_ms: float = 2.0, p99: float = 90.0, rss_kb: float = 120.0
) -> BenchReport:
    """A run's report with the figures the comparison reads; the rest plausible."""
    summary = Summary(1000, p99 / 2, p99, p99 * 1.2)
    return BenchReport(
        calls=calls,
        subscribers_per_call=2,
        duration_s=10.0,
        chunk_ms=100,
        result_ms=250,
        interim=False,
        placement="proxy on CPU 1; load generator + fake Deepgram on CPU 0",
        load_cpus=1,
        proxy_cpu_share=cpu_ms * calls / 1000,
        proxy_cpu_ms_per_call_s=cpu_ms,
        proxy_rss_idle=30_000_000,
        proxy_rss_loaded=30_000_000 + round(rss_kb * 1000 * calls),
        proxy_rss_after=31_000_000,
        proxy_log_problems=0,
        added=summary,
        added_net=Summary(1000, 1.0, p99 - 80, p99 - 70),
        fanout=Summary(1000, 1.0, 5.0, 8.0),
        audio_sent=1000,
        audio_received=1000,
        calls_exact=calls,
        calls_complete=calls,
        calls_failed=0,
        results_sent=80,
        deliveries=160,
        expected_deliveries=160,
        generator_cpu_share=0.1,
        fake_cpu_share=0.1,
        tick_lag=Summary(500, 0.1, 1.0, 2.0),
        tick_work=Summary(500, 1.0, 4.0, 5.0),
        others_on_proxy_cpu=0.0,
        others_on_load_cpu=0.02,
        held=True,
        verdict="held",
        deepgram_streams=calls,
        deepgram_reconnects=0,
        floods=None,
    )


def a_round(*, baseline_first: bool = False, **proxy: float) -> Round:
    baseline = replace(
        bench_report(cpu_ms=3.5, p99=390.0, rss_kb=100.0),
        chunk_ms=BUFFER_MS,
        placement="tutorial baseline on CPU 1; load generator + fake Deepgram on CPU 0",
    )
    return Round(bench_report(**proxy), baseline, baseline_first)  # type: ignore[arg-type]


def test_a_ratio_is_proxy_over_baseline_and_none_without_a_baseline_figure() -> None:
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(1.0, 0.0) is None


def test_every_figure_has_its_ratio() -> None:
    found = ratios(a_round(cpu_ms=1.4, p99=95.0, rss_kb=60.0))
    assert found["cpu_ms_per_call_s"] == pytest.approx(0.4)
    assert found["p99_added_ms"] == pytest.approx(95 / 390)
    assert found["p99_added_net_ms"] == pytest.approx(15 / 310)
    assert found["rss_per_call_kb"] == pytest.approx(0.6)
    assert found["p99_fanout_ms"] == pytest.approx(1.0)


def test_median_ratios_take_the_middle_round() -> None:
    rounds = [a_round(cpu_ms=ms) for ms in (3.5, 0.7, 1.75)]
    assert median_ratios(rounds)["cpu_ms_per_call_s"] == pytest.approx(0.5)


def test_targets_are_met_only_within_every_bound() -> None:
    assert all(targets(a_round(cpu_ms=1.4, p99=130.0, rss_kb=60.0)).values())
    missed = targets(a_round(cpu_ms=2.6, p99=131.0, rss_kb=101.0))
    assert [name for name, ok in missed.items() if not ok] == [
        "CPU <= 0.4x",
        "memory <= 0.6x",
        "memory <= 100 KB per call",
        "p99 added <= CHUNK_MS + 30 ms",
    ]


def test_the_report_shows_both_sides_the_ratios_and_the_order() -> None:
    report = BaselineReport((a_round(cpu_ms=2.6), a_round(baseline_first=True, cpu_ms=2.1)))
    text = format_baseline(report)
    assert text.index("round 1, proxy:") < text.index("round 1, baseline:")
    assert text.index("round 2, baseline:") < text.index("round 2, proxy:")
    assert "the baseline first" in text and "tutorial baseline" in text
    assert "0.74x" in text  # 2.6 / 3.5, CPU per call-second in round 1
    assert "median ratios over 2 rounds" in text and "CPU <= 0.4x: NOT met" in text


def test_the_json_holds_both_runs_their_ratios_and_the_medians() -> None:
    data = json.loads(json.dumps(baseline_json(BaselineReport((a_round(cpu_ms=1.75),)))))
    only = data["rounds"][0]
    assert only["proxy"]["proxy_cpu_ms_per_call_s"] == 1.75
    assert only["baseline"]["chunk_ms"] == BUFFER_MS
    assert only["ratios"]["cpu_ms_per_call_s"] == pytest.approx(0.5)
    assert data["median_ratios"]["cpu_ms_per_call_s"] == pytest.approx(0.5)


def test_the_sweeps_compare_their_largest_n_held() -> None:
    proxy = (bench_report(calls=400), replace(bench_report(calls=500), held=False))
    baseline = (bench_report(calls=200), replace(bench_report(calls=250), held=False))
    sweeps = BaselineSweep(proxy, baseline)
    assert sweeps.largest_held_ratio == 2.0
    assert "proxy 400, baseline 200: 2.00x (target >= 2x: met)" in format_baseline_sweep(sweeps)
    data = json.loads(json.dumps(baseline_sweep_json(sweeps)))
    assert (data["proxy"]["largest_held"], data["baseline"]["largest_held"]) == (400, 200)
    assert BaselineSweep(proxy, ()).largest_held_ratio is None


def test_net_latency_subtracts_the_wait_for_the_chunks_last_frame() -> None:
    sent = [0.00, 0.02, 0.04, 0.06]
    # Two chunks of two frames (640 stereo bytes each), each 5 ms after its last frame left.
    log = [(0.025, 640), (0.065, 1280)]
    assert net_latencies(sent, log, 320) == pytest.approx([0.005, 0.005, 0.005, 0.005])


def test_the_tutorials_mix_interleaves_the_tracks_inbound_first() -> None:
    inbound, outbound = pattern("inbound", 3200), pattern("outbound", 3200)
    stereo = mix(bytearray(inbound), bytearray(outbound))
    assert stereo[0::2] == inbound and stereo[1::2] == outbound


def test_the_deepgram_url_has_the_tutorials_query_and_the_extra_params() -> None:
    url = deepgram_url("ws://127.0.0.1:9/v1/listen", "interim_results=false")
    assert url == (
        "ws://127.0.0.1:9/v1/listen?encoding=mulaw&sample_rate=8000&channels=2"
        "&multichannel=true&interim_results=false"
    )
