"""`bench --baseline`'s results: the proxy and the tutorial's design (`tutorial_baseline`)
under the same load, one run after the other, their figures side by side and as ratios.

Pure: building the figures and the text needs no I/O. Each run's own figures are a
`BenchReport`, printed by `report.format_report`; this module adds the comparison and the
standing against issue 15's targets, which are all ratios to the baseline in the same run.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from .report import (
    BenchReport,
    format_report,
    format_sweep,
    largest_held,
    report_json,
    sweep_limit,
)

__all__ = [
    "FIGURES",
    "TARGETS",
    "BaselineReport",
    "BaselineSweep",
    "Round",
    "baseline_json",
    "baseline_sweep_json",
    "format_baseline",
    "format_baseline_sweep",
    "median_ratios",
    "ratio",
    "ratios",
    "targets",
]


@dataclass(frozen=True, slots=True)
class Figure:
    """A figure both sides have: its label, unit, and how to read it from a run."""

    label: str
    unit: str
    read: Callable[[BenchReport], float]


#: The figures compared, by key (the JSON's names). Lower is better for every one.
FIGURES: Final[dict[str, Figure]] = {
    "cpu_ms_per_call_s": Figure("CPU per call-second", "ms", lambda r: r.proxy_cpu_ms_per_call_s),
    "p99_added_ms": Figure("p99 added latency", "ms", lambda r: r.added.p99_ms),
    "p99_added_net_ms": Figure("p99 added, net of chunking", "ms", lambda r: r.added_net.p99_ms),
    "p99_fanout_ms": Figure("p99 fan-out latency", "ms", lambda r: r.fanout.p99_ms),
    "rss_per_call_kb": Figure("memory per call (RSS)", "KB", lambda r: r.rss_per_call / 1e3),
}

#: Issue 15's targets, as ratios to the baseline (proxy / baseline), and absolute bounds.
TARGETS: Final = {
    "largest_held_ratio_min": 2.0,
    "cpu_ratio_max": 0.4,
    "rss_ratio_max": 0.6,
    "rss_per_call_kb_max": 100.0,
    "p99_added_over_chunk_ms_max": 30.0,
}


def ratio(proxy: float, baseline: float) -> float | None:
    """`proxy` / `baseline`, or None when the baseline's figure is not positive."""
    return proxy / baseline if baseline > 0 else None


@dataclass(frozen=True, slots=True)
class Round:
    """One run of each, with the same options; `baseline_first` says which ran first."""

    proxy: BenchReport
    baseline: BenchReport
    baseline_first: bool


def ratios(r: Round) -> dict[str, float | None]:
    """Every figure of `FIGURES` as proxy / baseline."""
    return {key: ratio(f.read(r.proxy), f.read(r.baseline)) for key, f in FIGURES.items()}


def median_ratios(rounds: Sequence[Round]) -> dict[str, float | None]:
    """Each figure's ratio, the median over the rounds that have one."""
    each = [ratios(r) for r in rounds]
    medians: dict[str, float | None] = {}
    for key in FIGURES:
        values = [v for r in each if (v := r[key]) is not None]
        medians[key] = statistics.median(values) if values else None
    return medians


def targets(r: Round) -> dict[str, bool]:
    """Issue 15's targets that one round can judge (the largest N needs the sweep)."""
    found = ratios(r)
    cpu, rss = found["cpu_ms_per_call_s"], found["rss_per_call_kb"]
    return {
        f"CPU <= {TARGETS['cpu_ratio_max']}x": cpu is not None and cpu <= TARGETS["cpu_ratio_max"],
        f"memory <= {TARGETS['rss_ratio_max']}x": rss is not None
        and rss <= TARGETS["rss_ratio_max"],
        f"memory <= {TARGETS['rss_per_call_kb_max']:g} KB per call": r.proxy.rss_per_call / 1e3
        <= TARGETS["rss_per_call_kb_max"],
        f"p99 added <= CHUNK_MS + {TARGETS['p99_added_over_chunk_ms_max']:g} ms": (
            r.proxy.added.p99_ms <= r.proxy.chunk_ms + TARGETS["p99_added_over_chunk_ms_max"]
        ),
        "nothing lost": r.proxy.complete,
    }


@dataclass(frozen=True, slots=True)
class BaselineReport:
    """Every round of `bench --baseline`, in the order run."""

    rounds: tuple[Round, ...]


def _x(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def _completeness(r: BenchReport) -> str:
    return (
        f"{r.calls_complete}/{r.calls} complete, {r.calls_exact}/{r.calls} byte-exact, "
        f"{r.deliveries:,}/{r.expected_deliveries:,} deliveries"
    )


def _side_by_side(r: Round) -> list[str]:
    found = ratios(r)
    rows = [("", "proxy", "tutorial baseline", "proxy / baseline")]
    for key, f in FIGURES.items():
        rows.append(
            (f.label, f"{f.read(r.proxy):.2f} {f.unit}", f"{f.read(r.baseline):.2f} {f.unit}")
            + (_x(found[key]),)
        )
    rows.append(("chunk (its own wait)", f"{r.proxy.chunk_ms} ms", f"{r.baseline.chunk_ms} ms", ""))
    rows.append(("complete", _completeness(r.proxy), _completeness(r.baseline), ""))
    rows.append(
        (
            "held real time",
            "yes" if r.proxy.held else "NO",
            "yes" if r.baseline.held else "NO",
            "",
        )
    )
    rows.append(
        (
            "load saturated",
            _saturated(r.proxy),
            _saturated(r.baseline),
            "(YES: that side's figures are lower bounds)",
        )
    )
    rows.append(
        (
            "other activity",
            f"{r.proxy.others_on_proxy_cpu:.0%} / {r.proxy.others_on_load_cpu:.0%}",
            f"{r.baseline.others_on_proxy_cpu:.0%} / {r.baseline.others_on_load_cpu:.0%}",
            "(server's CPU / load's)",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return [
        f"{a:<{widths[0]}}  {b:<{widths[1]}}  {c:<{widths[2]}}  {d}".rstrip() for a, b, c, d in rows
    ]


def _saturated(r: BenchReport) -> str:
    return "YES" if r.load_saturated else "no"


def _standing(met: dict[str, bool]) -> str:
    return "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items())


def format_baseline(report: BaselineReport) -> str:
    """Every run's table, then each round side by side, then (over several rounds) the
    median ratios."""
    parts: list[str] = []
    for n, r in enumerate(report.rounds, 1):
        first, second = ("baseline", "proxy") if r.baseline_first else ("proxy", "baseline")
        for name in (first, second):
            parts += [f"round {n}, {name}:", format_report(getattr(r, name)), ""]
    for n, r in enumerate(report.rounds, 1):
        order = "the baseline first" if r.baseline_first else "the proxy first"
        parts.append(
            f"round {n} side by side (same load, arrival {r.proxy.arrival}, "
            f"one run after the other, {order})"
        )
        parts += _side_by_side(r)
        parts += [f"issue 15's targets: {_standing(targets(r))}", ""]
    if len(report.rounds) > 1:
        medians = median_ratios(report.rounds)
        parts.append(
            f"median ratios over {len(report.rounds)} rounds (proxy / baseline): "
            + ", ".join(f"{FIGURES[k].label} {_x(v)}" for k, v in medians.items())
        )
    return "\n".join(parts).rstrip()


def baseline_json(report: BaselineReport) -> dict[str, object]:
    """Every round (both runs, their ratios, the targets), and the median ratios."""
    return {
        "rounds": [
            {
                "proxy": report_json(r.proxy),
                "baseline": report_json(r.baseline),
                "baseline_first": r.baseline_first,
                "ratios": ratios(r),
                "targets": targets(r),
            }
            for r in report.rounds
        ],
        "median_ratios": median_ratios(report.rounds),
    }


@dataclass(frozen=True, slots=True)
class BaselineSweep:
    """Both sweeps of one invocation, each in the order its sizes were run."""

    proxy: tuple[BenchReport, ...]
    baseline: tuple[BenchReport, ...]

    @property
    def largest_held_ratio(self) -> float | None:
        """The proxy's largest N held over the baseline's."""
        return ratio(largest_held(self.proxy), largest_held(self.baseline))


def format_baseline_sweep(s: BaselineSweep) -> str:
    """Both sweeps' tables, then the ratio of their largest N against the target, and what
    limited each."""
    held = s.largest_held_ratio
    target = TARGETS["largest_held_ratio_min"]
    verdict = "met" if held is not None and held >= target else "NOT met"
    limits = [_LIMITS[sweep_limit(reports)[0]] for _, reports in _sides(s)]
    return "\n".join(
        [
            "proxy:",
            format_sweep(s.proxy),
            "",
            "tutorial baseline (its criterion uses its own 400 ms chunk):",
            format_sweep(s.baseline, server="the tutorial baseline"),
            "",
            f"largest N held: proxy {largest_held(s.proxy)}, baseline {largest_held(s.baseline)}: "
            f"{_x(held)} (target >= {target:g}x: {verdict}); the proxy's limited by "
            f"{limits[0]}, the baseline's by {limits[1]}",
        ]
    )


# What `sweep_limit` found, as the last line says it.
_LIMITS: Final = {
    "proxy": "itself",
    "load": "THE LOAD (a lower bound)",
    "sweep": "--sweep-max",
}


def _sides(s: BaselineSweep) -> tuple[tuple[str, Sequence[BenchReport]], ...]:
    return (("proxy", s.proxy), ("baseline", s.baseline))


def baseline_sweep_json(s: BaselineSweep) -> dict[str, object]:
    """Both sweeps, their largest N and what limited each, and the ratio."""
    data: dict[str, object] = {}
    for name, reports in _sides(s):
        limited_by, why = sweep_limit(reports)
        data[name] = {
            "sweep": [report_json(r) for r in reports],
            "largest_held": largest_held(reports),
            "limited_by": limited_by,
            "limit": why,
        }
    data["largest_held_ratio"] = s.largest_held_ratio
    return data
