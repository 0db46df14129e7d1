"""`bench --remote-watchers`' results: the single-process path and the path through Redis
(calls on instance A, their watchers on instance B), side by side.

Pure: building the figures and the text needs no I/O. Each path's own figures are a
`BenchReport`, printed by `report.format_report`; this module adds Redis's figures and the
comparison.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

from .report import BenchReport, format_report, report_json

__all__ = [
    "FANOUT_TARGET_MS",
    "INSTANCE_B",
    "REDIS",
    "RedisFigures",
    "ScaleOutReport",
    "format_scale_out",
    "redis_figures",
    "scale_out_json",
]

#: Issue 12's target: Redis adds at most this much to the p99 fan-out latency (at 100 calls
#: with 2 remote watchers each).
FANOUT_TARGET_MS = 5.0
#: The names of the processes beside instance A in the remote path's `BenchReport.beside_cpu`.
INSTANCE_B = "instance B"
REDIS = "redis-server"
# The benchmark's own INFO requests, one per sample: not the proxies' work.
_OWN_COMMANDS = ("info",)


@dataclass(frozen=True, slots=True)
class RedisFigures:
    """The commands Redis processed over the measured window, for `calls` calls."""

    seconds: float
    calls: int
    commands: int  # all commands, but the benchmark's own INFO
    by_command: dict[str, int]  # the same, by command, most first

    @property
    def per_call_second(self) -> float:
        """Commands per call-second: what one more call costs Redis, per second."""
        return self.commands / (self.calls * self.seconds) if self.calls and self.seconds else 0.0


def redis_figures(
    first: tuple[float, int, Mapping[str, int]],
    last: tuple[float, int, Mapping[str, int]],
    calls: int,
) -> RedisFigures:
    """Redis's figures between two samples, each (monotonic time, total_commands_processed,
    calls by command), without the benchmark's own INFO commands."""
    (start, total_start, by_start), (end, total_end, by_end) = first, last
    delta = {name: n - by_start.get(name, 0) for name, n in by_end.items()}
    own = sum(delta.pop(name, 0) for name in _OWN_COMMANDS)
    by_command = {name: n for name, n in sorted(delta.items(), key=lambda kv: -kv[1]) if n > 0}
    return RedisFigures(
        seconds=end - start,
        calls=calls,
        commands=max(0, total_end - total_start - own),
        by_command=by_command,
    )


@dataclass(frozen=True, slots=True)
class ScaleOutReport:
    """One run of each path with the same calls and watchers: `single` on one proxy,
    `remote` with the calls on instance A (its `proxy_*` figures) and the watchers on
    instance B (`beside_cpu[INSTANCE_B]`), through a redis-server (`beside_cpu[REDIS]`)."""

    single: BenchReport
    remote: BenchReport
    redis: RedisFigures

    def cpu_ms_per_call_s(self, share: float) -> float:
        """A CPU share (of one core) as CPU-milliseconds per call-second."""
        return share * 1000 / self.remote.calls

    @property
    def remote_cpu_ms_per_call_s(self) -> dict[str, float]:
        """A, B and Redis, each in CPU-ms per call-second."""
        return {
            "A": self.remote.proxy_cpu_ms_per_call_s,
            "B": self.cpu_ms_per_call_s(self.remote.beside_cpu.get(INSTANCE_B, 0.0)),
            "Redis": self.cpu_ms_per_call_s(self.remote.beside_cpu.get(REDIS, 0.0)),
        }

    @property
    def cpu_ratio(self) -> float:
        """CPU of A + B + Redis over the single process's, for the same calls and watchers."""
        single = self.single.proxy_cpu_ms_per_call_s
        return sum(self.remote_cpu_ms_per_call_s.values()) / single if single else 0.0

    @property
    def p99_added_by_redis_ms(self) -> float:
        """How much later the p99 result reached a watcher on B than one on the single
        process."""
        return self.remote.fanout.p99_ms - self.single.fanout.p99_ms

    @property
    def within_target(self) -> bool:
        """Redis added at most `FANOUT_TARGET_MS` to the p99 fan-out, and both paths
        delivered everything."""
        return (
            self.p99_added_by_redis_ms <= FANOUT_TARGET_MS
            and self.single.complete
            and self.remote.complete
        )


def _completeness(r: BenchReport) -> str:
    return (
        f"{r.calls_complete}/{r.calls} calls, {r.deliveries:,}/{r.expected_deliveries:,} "
        f"deliveries in order"
    )


def _saturated(r: BenchReport) -> str:
    return f"YES ({r.load.reason}): lower bounds" if r.load_saturated else "no"


def format_scale_out(s: ScaleOutReport) -> str:
    """Both runs' tables, then the comparison."""
    single, remote, redis = s.single, s.remote, s.redis
    parts = s.remote_cpu_ms_per_call_s
    top = ", ".join(
        f"{name} {n / (redis.calls * redis.seconds):.2f}"
        for name, n in list(redis.by_command.items())[:6]
        if redis.calls and redis.seconds
    )
    shares = f"A {remote.proxy_cpu_share:.1%}" + "".join(
        f", {name} {share:.1%}" for name, share in remote.beside_cpu.items()
    )
    rows = [
        ("", "one process", "calls on A, watchers on B, through Redis"),
        (
            "CPU, share of a core",
            f"{single.proxy_cpu_share:.1%}",
            f"{shares}; total {remote.proxy_cpu_share + sum(remote.beside_cpu.values()):.1%}",
        ),
        (
            "CPU-ms per call-s",
            f"{single.proxy_cpu_ms_per_call_s:.2f}",
            " + ".join(f"{name} {ms:.2f}" for name, ms in parts.items())
            + f" = {sum(parts.values()):.2f} ({s.cpu_ratio:.2f}x one process)",
        ),
        (
            "fan-out p50",
            f"{single.fanout.p50_ms:.1f} ms",
            f"{remote.fanout.p50_ms:.1f} ms ({remote.fanout.p50_ms - single.fanout.p50_ms:+.1f})",
        ),
        (
            "fan-out p99",
            f"{single.fanout.p99_ms:.1f} ms",
            f"{remote.fanout.p99_ms:.1f} ms ({s.p99_added_by_redis_ms:+.1f}; "
            f"target: Redis adds <= {FANOUT_TARGET_MS:g} ms)",
        ),
        (
            "added latency p99",
            f"{single.added.p99_ms:.1f} ms",
            f"{remote.added.p99_ms:.1f} ms",
        ),
        ("complete", _completeness(single), _completeness(remote)),
        ("load saturated", _saturated(single), _saturated(remote)),
        (
            "Redis commands",
            "none",
            f"{redis.commands:,} in {redis.seconds:.1f} s: "
            f"{redis.per_call_second:.2f} per call-second ({top})",
        ),
    ]
    name_width = max(len(r[0]) for r in rows)
    single_width = max(len(r[1]) for r in rows)
    table = [f"{a:<{name_width}}  {b:<{single_width}}  {c}".rstrip() for a, b, c in rows]
    verdict = "within target" if s.within_target else "NOT within target (or something was lost)"
    return "\n".join(
        [
            "one process: calls and watchers on one proxy, no Redis",
            format_report(single),
            "",
            "remote watchers: calls on instance A ('proxy' below), watchers on instance B",
            format_report(remote),
            "",
            "side by side (same calls and watchers, one run after the other)",
            *table,
            f"Redis adds {s.p99_added_by_redis_ms:+.1f} ms at p99: {verdict}",
        ]
    )


def scale_out_json(s: ScaleOutReport) -> dict[str, object]:
    """Both runs, Redis's figures and the comparison, JSON-ready."""
    return {
        "single": report_json(s.single),
        "remote": report_json(s.remote),
        "redis": asdict(s.redis) | {"per_call_second": s.redis.per_call_second},
        "remote_cpu_ms_per_call_s": s.remote_cpu_ms_per_call_s,
        "cpu_ratio": s.cpu_ratio,
        "p99_added_by_redis_ms": s.p99_added_by_redis_ms,
        "within_target": s.within_target,
    }
