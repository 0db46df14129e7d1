"""`bench --remote-watchers`' pure parts: reading Redis's INFO and replies, Redis's figures
over the window, and the two paths side by side."""

from __future__ import annotations

from dataclasses import replace

import pytest

from twilio_dg_proxy.commands.bench.measure import Summary
from twilio_dg_proxy.commands.bench.redis_server import (
    command_calls,
    info_fields,
    resp_bulk_string,
)
from twilio_dg_proxy.commands.bench.report import BenchReport
from twilio_dg_proxy.commands.bench.scale_out_report import (
    INSTANCE_B,
    REDIS,
    ScaleOutReport,
    format_scale_out,
    redis_figures,
    scale_out_json,
)

INFO = (
    "# Stats\r\ntotal_connections_received:7\r\ntotal_commands_processed:1234\r\n\r\n"
    "# Commandstats\r\n"
    "cmdstat_xadd:calls=1000,usec=2000,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n"
    "cmdstat_config|get:calls=2,usec=10,usec_per_call=5.00,rejected_calls=0,failed_calls=0\r\n"
)


def test_info_fields_are_the_name_value_lines_without_headers() -> None:
    fields = info_fields(INFO)
    assert fields["total_commands_processed"] == "1234"
    assert not any(name.startswith("#") or not name for name in fields)


def test_command_calls_are_read_by_command_name() -> None:
    assert command_calls(info_fields(INFO)) == {"xadd": 1000, "config|get": 2}


def test_a_bulk_string_reply_is_read_once_complete() -> None:
    reply = b"$5\r\nhello\r\n"
    assert [resp_bulk_string(reply[:n]) for n in (0, 3, 8, 10)] == [None, None, None, None]
    assert resp_bulk_string(reply) == b"hello"
    with pytest.raises(ValueError, match="not a bulk string"):
        resp_bulk_string(b"-ERR unknown command\r\n")


def test_redis_figures_leave_out_the_benchmarks_own_info_commands() -> None:
    first = (10.0, 1000, {"xadd": 400, "info": 3})
    last = (12.0, 1601, {"xadd": 900, "xread": 100, "info": 4, "get": 0})
    figures = redis_figures(first, last, calls=50)
    assert figures.commands == 600
    assert figures.by_command == {"xadd": 500, "xread": 100}
    assert figures.per_call_second == pytest.approx(600 / (50 * 2.0))
    assert redis_figures(first, first, calls=50).per_call_second == 0.0


def _report(**changes: object) -> BenchReport:
    latency = Summary(count=100, p50_ms=1.0, p99_ms=4.0, max_ms=8.0)
    base = BenchReport(
        calls=100,
        subscribers_per_call=2,
        duration_s=10.0,
        chunk_ms=100,
        result_ms=250,
        interim=False,
        placement="proxy on CPU 1; load generator + fake Deepgram on CPU 0",
        load_cpus=1,
        proxy_cpu_share=0.26,
        proxy_cpu_ms_per_call_s=2.6,
        proxy_rss_idle=32_000_000,
        proxy_rss_loaded=45_000_000,
        proxy_rss_after=45_000_000,
        proxy_log_problems=0,
        added=Summary(count=50_000, p50_ms=42.0, p99_ms=85.0, max_ms=115.0),
        fanout=latency,
        audio_sent=1000,
        audio_received=1000,
        calls_exact=100,
        calls_complete=100,
        calls_failed=0,
        results_sent=9204,
        deliveries=18_408,
        expected_deliveries=18_408,
        generator_cpu_share=0.12,
        fake_cpu_share=0.10,
        tick_lag=latency,
        tick_work=latency,
        others_on_proxy_cpu=0.0,
        others_on_load_cpu=0.0,
        held=True,
        verdict="p99 added latency 85 ms <= 200 ms and nothing lost",
        deepgram_streams=100,
        deepgram_reconnects=0,
        floods=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]  # test data, checked at run


def _scale_out(remote_p99_ms: float, **remote: object) -> ScaleOutReport:
    return ScaleOutReport(
        single=_report(),
        remote=_report(
            proxy_cpu_share=0.24,
            proxy_cpu_ms_per_call_s=2.4,
            fanout=Summary(count=100, p50_ms=2.0, p99_ms=remote_p99_ms, max_ms=9.0),
            beside_cpu={INSTANCE_B: 0.10, REDIS: 0.05},
            **remote,
        ),
        redis=redis_figures((0.0, 0, {}), (10.0, 3000, {"xadd": 2000, "xread": 1000}), 100),
    )


def test_the_remote_path_costs_a_b_and_redis_against_the_one_process() -> None:
    report = _scale_out(6.0)
    assert report.remote_cpu_ms_per_call_s == pytest.approx({"A": 2.4, "B": 1.0, "Redis": 0.5})
    assert report.cpu_ratio == pytest.approx(3.9 / 2.6)
    assert report.p99_added_by_redis_ms == pytest.approx(2.0)
    assert report.within_target


def test_the_target_is_missed_by_a_slow_or_incomplete_remote_path() -> None:
    assert not _scale_out(9.5).within_target
    assert not _scale_out(5.0, calls_complete=99, deliveries=18_407).within_target


def test_the_side_by_side_text_shows_both_paths_and_redis_commands() -> None:
    text = format_scale_out(_scale_out(6.0))
    assert text.count("verdict") == 2  # both paths' own tables
    assert "A 2.40 + B 1.00 + Redis 0.50 = 3.90 (1.50x one process)" in text
    assert "3.00 per call-second (xadd 2.00, xread 1.00)" in text
    assert "+2.0; target: Redis adds <= 5 ms" in text
    assert text.endswith("within target")
    data = scale_out_json(_scale_out(6.0))
    assert data["redis"] == {
        "seconds": 10.0,
        "calls": 100,
        "commands": 3000,
        "by_command": {"xadd": 2000, "xread": 1000},
        "per_call_second": 3.0,
    }
