"""`bench --remote-watchers`: one short real run of both paths (the bench starts its own
redis-server), and the command's refusal to sweep it."""

from __future__ import annotations

import subprocess
import sys

from twilio_dg_proxy.commands.bench.load import BenchOptions
from twilio_dg_proxy.commands.bench.scale_out import run_remote_watchers
from twilio_dg_proxy.commands.bench.scale_out_report import INSTANCE_B, REDIS, format_scale_out

from ...redis_server import require_redis_server
from ...timing import S


async def test_both_paths_deliver_everything_and_redis_commands_are_counted() -> None:
    """Calls on A, watchers on B through Redis, beside the same calls on one proxy: every
    result reaches every watcher in order on both paths, and Redis did work for the calls.
    How fast either path is, is the benchmark's figure, not this test's."""
    require_redis_server()
    report = await run_remote_watchers(
        BenchOptions(calls=3, subscribers=2, duration_s=2.0, warmup_s=0.5)
    )
    for path in (report.single, report.remote):
        assert path.complete, path
        assert path.calls_exact == 3 and path.calls_failed == 0
        assert path.deliveries == path.expected_deliveries > 0
        assert path.fanout.count > 0
    assert report.single.beside_cpu == {}
    assert set(report.remote.beside_cpu) == {INSTANCE_B, REDIS}
    assert report.redis.commands > 0 and report.redis.per_call_second > 0
    assert "xadd" in report.redis.by_command  # each result published once to its stream
    text = format_scale_out(report)
    assert "one process" in text and "watchers on B" in text and "Redis commands" in text


def test_remote_watchers_cannot_be_swept() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "twilio_dg_proxy", "bench", "--remote-watchers", "--sweep"],
        capture_output=True,
        text=True,
        timeout=60 * S,
        check=False,
    )
    assert done.returncode == 2
    assert "--remote-watchers" in done.stderr and "--sweep" in done.stderr
