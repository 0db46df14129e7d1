"""The benchmark's results: one `BenchReport` per run, printed as a table or one JSON line.

Pure: building the text needs no I/O.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from .arrival import TIMINGS, Arrival
from .measure import REAL_TIME_MARGIN_MS, LoadVerdict, Summary, load_verdict

__all__ = [
    "NOISE_THRESHOLD",
    "BenchReport",
    "FloodReport",
    "criterion",
    "format_report",
    "format_sweep",
    "largest_held",
    "report_json",
    "sweep_json",
    "sweep_limit",
]

#: Above this share of a core used by others on the run's CPUs, the run is flagged as noisy.
NOISE_THRESHOLD = 0.10


@dataclass(frozen=True, slots=True)
class FloodReport:
    """What `bench --ping-floods` did over the window (`flood.FloodResult`), its CPU, and
    the proxy's own count of connections it closed for flooding (None: it keeps none)."""

    flooders: int  # connections flooding at any one time
    seconds: float
    pings_sent: int  # written to the sockets; the proxy reads only part of them
    pongs_received: int  # pings the proxy answered
    connections: int  # upgrades accepted, reconnections included
    refused: int  # upgrades refused
    connect_errors: int
    closes: dict[int, int]  # close frames from the proxy, by code
    drops: int  # connections the proxy ended without a close frame
    cpu_share: float  # the flood process's CPU, as a share of one core
    proxy_control_floods: int | None  # /healthz's control_floods at the end

    @property
    def closed_by_proxy(self) -> int:
        """Flooding connections the proxy ended, with a close frame or without."""
        return sum(self.closes.values()) + self.drops


@dataclass(frozen=True, slots=True)
class BenchReport:
    """Everything one run measured. Shares are of one core (1.0 = a whole core); memory is
    in bytes; latencies in milliseconds; counts over the whole run."""

    calls: int
    subscribers_per_call: int
    duration_s: float
    chunk_ms: int
    result_ms: int
    interim: bool  # Deepgram interim results too (one per channel halfway through a window)
    placement: str  # which CPUs ran the proxy and the load
    load_cpus: int  # how many CPUs the load generator and the fake Deepgram had
    # The proxy, over the measurement window.
    proxy_cpu_share: float
    proxy_cpu_ms_per_call_s: float
    proxy_rss_idle: int  # before any call
    proxy_rss_loaded: int  # at the end of the window
    proxy_rss_after: int  # once every call had ended
    proxy_log_problems: int  # WARNING and ERROR lines it logged
    # Latencies, over frames sent and results stamped within the window.
    added: Summary
    fanout: Summary
    # Completeness, over the whole run.
    audio_sent: int  # stereo bytes Deepgram should have received
    audio_received: int
    calls_exact: int  # calls whose stream hashed to the expected interleaving
    calls_complete: int
    calls_failed: int
    results_sent: int  # Results and Metadata messages the fake sent
    deliveries: int  # messages subscribers got, complete and in order
    expected_deliveries: int
    # The load side: this process (calls and subscribers) and the fake Deepgram's.
    generator_cpu_share: float
    fake_cpu_share: float
    tick_lag: Summary  # how late the shared 20 ms ticker fired
    tick_work: Summary  # how long one tick took to send every call's frames
    # Everything else the proxy's and the load's CPUs did (other processes, interrupts).
    others_on_proxy_cpu: float
    others_on_load_cpu: float
    held: bool
    verdict: str
    # Deepgram streams the fake saw (one per call unless the proxy reopened some), and the
    # proxy's count of reopened streams from /healthz at the end (None: it did not answer).
    deepgram_streams: int
    deepgram_reconnects: int | None
    floods: FloodReport | None  # with --ping-floods
    # Added latency net of the server's own chunking wait (`measure.net_latencies`).
    added_net: Summary = Summary(0, 0.0, 0.0, 0.0)
    # Other server-side processes beside the proxy (`Serving.beside`: the watchers' instance,
    # redis-server), by name: their CPU over the window, as shares of one core.
    beside_cpu: dict[str, float] = field(default_factory=dict)
    # How the Twilio side timed its writes (`arrival`; `tick_lag` and `tick_work` are per
    # wake-up of the ticker: `Timing.slots` of them per 20 ms tick).
    arrival: Arrival = "together"

    @property
    def rss_per_call(self) -> float:
        """Resident memory the calls added, per call (loaded minus idle)."""
        return (self.proxy_rss_loaded - self.proxy_rss_idle) / self.calls if self.calls else 0.0

    @property
    def complete(self) -> bool:
        """Every byte and every result arrived, in order, for every call."""
        return self.calls_complete == self.calls

    @property
    def noisy(self) -> bool:
        """Other activity took a noticeable share of the CPUs the run relied on."""
        return max(self.others_on_proxy_cpu, self.others_on_load_cpu) > NOISE_THRESHOLD

    @property
    def load_cpu_share(self) -> float:
        """The generator's and the fake's CPU, as a share of the CPUs they had."""
        return (self.generator_cpu_share + self.fake_cpu_share) / self.load_cpus

    @property
    def load(self) -> LoadVerdict:
        """Whether the load side was saturated (`measure.load_verdict`), and why."""
        return load_verdict(
            generator=self.generator_cpu_share, fake=self.fake_cpu_share, load_cpus=self.load_cpus
        )

    @property
    def load_saturated(self) -> bool:
        """The load side was too busy for the figures to be the proxy's alone: they are
        lower bounds."""
        return self.load.saturated


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def _latency(s: Summary) -> str:
    return (
        f"p50 {s.p50_ms:7.1f} ms   p99 {s.p99_ms:7.1f} ms   max {s.max_ms:7.1f} ms   (n={s.count})"
    )


def format_report(r: BenchReport) -> str:
    """The run as a table for people; warnings, if any, come last and loud."""
    rows = [
        (
            "setup",
            f"{r.calls} calls x {r.subscribers_per_call} subscribers, {r.duration_s:g} s "
            f"measured, CHUNK_MS={r.chunk_ms}, a final result per channel every "
            f"{r.result_ms} ms" + (" plus an interim halfway" if r.interim else ""),
        ),
        ("arrival", _arrival(r.arrival)),
        ("placement", r.placement),
        (
            "proxy CPU",
            f"{r.proxy_cpu_share:.1%} of a core, "
            f"{r.proxy_cpu_ms_per_call_s:.2f} CPU-ms per call-second",
        ),
        (
            "proxy RSS",
            f"{_mb(r.proxy_rss_loaded)} loaded, {_mb(r.proxy_rss_idle)} idle, "
            f"{r.rss_per_call / 1e3:.0f} KB per call; {_mb(r.proxy_rss_after)} after the calls",
        ),
        ("added latency", _latency(r.added)),
        ("  net of chunking", _latency(r.added_net)),
        ("fan-out latency", _latency(r.fanout)),
        (
            "audio",
            f"{r.audio_received:,} of {r.audio_sent:,} bytes reached Deepgram; "
            f"byte-exact channels in {r.calls_exact}/{r.calls} calls",
        ),
        (
            "results",
            f"{r.deliveries:,} of {r.expected_deliveries:,} deliveries "
            f"({r.results_sent:,} messages from Deepgram); "
            f"{r.calls_complete}/{r.calls} calls complete, {r.calls_failed} failed",
        ),
        (
            "load",
            f"generator {r.generator_cpu_share:.1%} of a core, fake Deepgram "
            f"{r.fake_cpu_share:.1%}; ticker lag p99 {r.tick_lag.p99_ms:.1f} ms, "
            + _ticker_work(r),
        ),
        ("load saturated", _saturation(r.load)),
        (
            "other activity",
            f"{r.others_on_proxy_cpu:.0%} of a core on the proxy's CPU, "
            f"{r.others_on_load_cpu:.0%} on the load's (other processes, interrupts)",
        ),
        (
            "Deepgram",
            f"{r.deepgram_streams} streams for {r.calls} calls, "
            + (
                "reconnects unknown (/healthz did not answer)"
                if r.deepgram_reconnects is None
                else f"{r.deepgram_reconnects} reconnects"
            ),
        ),
    ]
    if r.beside_cpu:
        rows.append(("beside", _beside(r)))
    if r.floods is not None:
        rows.append(("floods", _floods(r.floods)))
    rows.append(
        ("verdict", ("HELD real time: " if r.held else "did NOT hold real time: ") + r.verdict)
    )
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    if r.proxy_log_problems:
        lines.append(f"note: the proxy logged {r.proxy_log_problems} WARNING/ERROR line(s)")
    if r.noisy:
        lines.append(
            f"WARNING: a noisy machine: other activity took {r.others_on_proxy_cpu:.0%} of the "
            f"proxy's CPU and {r.others_on_load_cpu:.0%} of the load's; the figures are worse "
            "than the proxy alone would give"
        )
    if r.load_saturated:
        lines.append(
            f"WARNING: the load side is saturated ({r.load.reason}): the latencies may be the "
            "load's, not the proxy's, and the figures are lower bounds"
        )
    return "\n".join(lines)


def _arrival(arrival: Arrival) -> str:
    return f"{arrival}: {TIMINGS[arrival].words}"


def _ticker_work(r: BenchReport) -> str:
    """The ticker's work per wake-up: a tick, or one of the slots a tick is divided into."""
    slots = TIMINGS[r.arrival].slots
    if slots == 1:
        return f"tick work p99 {r.tick_work.p99_ms:.1f} ms"
    return f"slot work p99 {r.tick_work.p99_ms:.1f} ms ({slots} slots a tick)"


def _saturation(verdict: LoadVerdict) -> str:
    if verdict.saturated:
        return f"YES: {verdict.reason}: the figures are lower bounds"
    return f"no: {verdict.reason}"


def _beside(r: BenchReport) -> str:
    return "; ".join(
        f"{name} {share:.1%} of a core, {share * 1000 / r.calls:.2f} CPU-ms per call-second"
        for name, share in r.beside_cpu.items()
    )


def _floods(f: FloodReport) -> str:
    codes = ", ".join(f"{code} x{n:,}" for code, n in sorted(f.closes.items())) or "no close frame"
    counted = (
        "" if f.proxy_control_floods is None else f"; the proxy counted {f.proxy_control_floods:,}"
    )
    return (
        f"{f.flooders} at a time, {f.connections:,} connections: {f.pings_sent:,} pings sent "
        f"({f.pings_sent / f.seconds if f.seconds else 0:,.0f}/s), {f.pongs_received:,} answered; "
        f"closed by the proxy {f.closed_by_proxy:,} times ({codes}; {f.drops} without), "
        f"{f.refused} refused{counted}; flood process {f.cpu_share:.0%} of a core"
    )


def criterion(chunk_ms: int) -> str:
    """The sweep's definition of holding real time, in words."""
    return (
        f"p99 added audio latency <= CHUNK_MS + {REAL_TIME_MARGIN_MS} ms "
        f"(= {chunk_ms + REAL_TIME_MARGIN_MS} ms) and no audio or result lost"
    )


def format_sweep(reports: Sequence[BenchReport], server: str = "the proxy") -> str:
    """One row per size tried, in the order tried, then the largest size held and what
    limited it (`server`: what ran in the proxy's place)."""
    header = (
        f"{'calls':>6} {'CPU':>6} {'ms/call-s':>9} {'KB/call':>8} {'p99 added':>10} "
        f"{'p99 fan-out':>11} {'complete':>9} {'load':>6} {'others':>6}  verdict"
    )
    lines = [header]
    chunk_ms = reports[0].chunk_ms if reports else 100
    for r in reports:
        lines.append(
            f"{r.calls:>6} {r.proxy_cpu_share:>6.0%} {r.proxy_cpu_ms_per_call_s:>9.2f} "
            f"{r.rss_per_call / 1e3:>8.0f} {r.added.p99_ms:>8.0f}ms {r.fanout.p99_ms:>9.0f}ms "
            f"{'yes' if r.complete else 'NO':>9} {r.load_cpu_share:>6.0%} "
            f"{max(r.others_on_proxy_cpu, r.others_on_load_cpu):>6.0%}  "
            f"{'held' if r.held else 'failed'}" + (" (load saturated)" if r.load_saturated else "")
        )
    lines.append(f"largest N held: {largest_held(reports) or 'none'} ({criterion(chunk_ms)})")
    limited_by, why = sweep_limit(reports)
    by = {"proxy": f"limited by {server}", "load": "LIMITED BY THE LOAD"}
    lines.append(f"{by.get(limited_by, 'limited by the sweep')}: {why}")
    lines += [f"arrival: {_arrival(a)}" for a in sorted({r.arrival for r in reports})]
    saturated = sorted({r.calls for r in reports if r.load_saturated and not r.held})
    if saturated:
        lines.append(
            f"WARNING: the load side saturated at {', '.join(map(str, saturated))} calls (its"
            " column: generator + fake Deepgram, per load CPU); a failure there may be the"
            " load's"
        )
    return "\n".join(lines)


def sweep_limit(reports: Sequence[BenchReport]) -> tuple[str, str]:
    """What bounded the sweep's largest N held, and why in words: "proxy" (the next size
    failed with the load side not saturated: the limit is the server under test's, the
    proxy or what ran in its place), "load" (the load side saturated where it failed: the
    largest N is a lower bound), or "sweep" (nothing above it failed: the sweep's own
    bounds, --sweep-max)."""
    largest = largest_held(reports)
    ceiling = min((r.calls for r in reports if not r.held and r.calls > largest), default=None)
    if ceiling is None:
        return "sweep", "no size above the largest held failed (--sweep-max)"
    runs = [r for r in reports if r.calls == ceiling]
    saturated = [r for r in runs if r.load_saturated]
    if saturated:
        return "load", (
            f"at {ceiling} calls the run failed with the load side saturated "
            f"({saturated[0].load.reason}): the largest N held is a lower bound"
        )
    return "proxy", (
        f"at {ceiling} calls the run failed with the load side not saturated "
        f"({runs[0].load.reason})"
    )


def largest_held(reports: Sequence[BenchReport]) -> int:
    """The most calls a run held real time with, below the smallest size that failed every
    time it was tried (0 if none held)."""
    held = {r.calls for r in reports if r.held}
    failed = {r.calls for r in reports if not r.held} - held
    ceiling = min(failed, default=None)
    return max((n for n in held if ceiling is None or n < ceiling), default=0)


def report_json(r: BenchReport) -> dict[str, object]:
    """The run as a JSON-ready dict (field names as in `BenchReport`, plus derived figures)."""
    data = asdict(r)
    data["rss_per_call"] = round(r.rss_per_call)
    data["complete"] = r.complete
    data["load_saturated"] = r.load_saturated
    data["load_verdict"] = r.load.reason
    data["noisy"] = r.noisy
    return data


def sweep_json(reports: Sequence[BenchReport]) -> str:
    """The sweep as one JSON line: every run, the largest size held and the criterion."""
    chunk_ms = reports[0].chunk_ms if reports else 100
    limited_by, why = sweep_limit(reports)
    return json.dumps(
        {
            "sweep": [report_json(r) for r in reports],
            "largest_held": largest_held(reports),
            "criterion": criterion(chunk_ms),
            "limited_by": limited_by,
            "limit": why,
        }
    )
