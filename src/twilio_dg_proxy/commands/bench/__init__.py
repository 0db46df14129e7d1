"""The `bench` command: how many calls one proxy process holds, and the delays it adds.

Pure: `measure` (latency mapping, percentiles, completeness, verdict, sweep plan),
`report` (the table and the JSON line), `scale_out_report` (the two paths side by side) and
`arrival` (--arrival: when the Twilio side writes each call's frames within a tick).
I/O: `procfs` (CPU and memory from /proc), `wire` (a lean WebSocket client for the load),
`fake_server` (the fake Deepgram in its own process), `processes` (the proxy under test,
CPU placement, py-spy), `load` (one run: the calls, their watchers, the shared ticker, and
the figures), `redis_server` and `scale_out` (`--remote-watchers`: Redis and two proxies),
`tutorial_baseline`, `baseline` and `baseline_report` (`--baseline`: the tutorial's design
measured beside the proxy).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from ... import config, event_loop
from ..arguments import argument, count, name_value
from .arrival import ARRIVALS
from .measure import LOAD_SATURATED, REAL_TIME_MARGIN_MS, next_sweep_size, top_frames
from .procfs import wait_until_quiet

if TYPE_CHECKING:
    from .baseline import Side
    from .load import BenchOptions
    from .report import BenchReport

DESCRIPTION = f"""\
Measure the proxy under load. Starts `python -m twilio_dg_proxy --port 0` as a separate
process pinned to one CPU, with DEEPGRAM_URL pointing at a fake Deepgram (its own process)
that sends a final result per channel every --result-ms of audio; on the other CPUs, runs N
simulated Twilio calls (both tracks, 20 ms frames in real time from one shared ticker, timed
as --arrival says) with M /client subscribers each, for a warm-up then D measured seconds;
prints one table (and, with --json, one JSON line).

Figures, over the measured window:
  proxy CPU        share of one core, and CPU-milliseconds per call-second (/proc/PID/stat)
  proxy RSS        resident memory idle, loaded, per call, and after the calls ended
  added latency    from a Twilio frame leaving to the fake Deepgram holding the stereo
                   bytes covering it; includes the CHUNK_MS chunking wait (by design)
  fan-out latency  from the fake Deepgram sending a result to each subscriber receiving it
  completeness     audio bytes at Deepgram vs sent, both channels byte-exact (SHA-256 of the
                   stream against the expected interleaving), every result to every watcher
  load             the generator's and the fake Deepgram's CPU, and the ticker's lateness
  load saturated   YES when either used over {LOAD_SATURATED:.0%} of a core, or both together
                   over {LOAD_SATURATED:.0%} of the load's CPUs: the latencies may then be the
                   load's, and the figures are lower bounds (JSON: load_saturated)
  other activity   CPU the run's CPUs spent on anything else (/proc/stat): the noise
  Deepgram         streams the fake saw, and the proxy's Deepgram reconnects (/healthz)
  floods           with --ping-floods N: N connections flooding /client with pings over
                   the window, reconnecting when closed (issue 11's attacker); pings sent
                   and answered, connections, how the proxy closed them

--remote-watchers runs the same calls and watchers twice, one run after the other: on one
proxy, then with the calls on instance A and their watchers on instance B, both with
REDIS_URL pointing at a redis-server the benchmark starts (persistence off). A, B and Redis
share the proxy's CPU. It adds, side by side: CPU-ms per call-second of A, B and Redis
against the single process, p50/p99 fan-out of both paths and what Redis adds (target:
<= 5 ms at p99), Redis commands per call-second (INFO's total_commands_processed over the
window), and completeness of both.

--baseline measures, in the same invocation and with the same load, the proxy and a
reference implementation of the tutorial's design (its own process in the proxy's place:
frames paired on arrival, 400 ms buffers, pydub mixing, websockets' recv() path, one
unbounded queue per watcher), one run after the other (--rounds N: N of each, the order
alternating, the proxy first in round 1). It reports each figure for both and the ratio
proxy / baseline: CPU per call-second, p99 added latency (with and without each side's own
chunking wait), p99 fan-out, memory per call, completeness; with --sweep, both sweeps
(their sizes alternating) and the ratio of their largest N.

A run HOLDS REAL TIME when its p99 added latency is at most CHUNK_MS + {REAL_TIME_MARGIN_MS} ms and
nothing was lost. --sweep raises N (doubling, then bisecting) to the largest N that holds,
and says what limited it: the proxy (the next size failed with the load not saturated) or
the load (it saturated there: the largest N is a lower bound).
Other processes on the machine skew every figure: compare runs made side by side.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The bench command's options."""
    parser.add_argument(
        "-n", "--calls", type=count(), default=100, help="concurrent calls (default 100)"
    )
    parser.add_argument(
        "-m", "--subscribers", type=int, default=2, help="subscribers per call (default 2)"
    )
    parser.add_argument(
        "-d", "--duration", type=float, default=10.0, help="measured seconds (default 10)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds of audio before measuring (default 1)"
    )
    parser.add_argument(
        "--chunk-ms", type=int, default=100, help="the proxy's CHUNK_MS (default 100)"
    )
    parser.add_argument(
        "--result-ms",
        type=int,
        default=250,
        help="the fake Deepgram sends a final result per channel every this many ms of audio "
        "(default 250)",
    )
    parser.add_argument(
        "--interim",
        action="store_true",
        help="Deepgram interim results too (interim_results=true: twice the results)",
    )
    parser.add_argument(
        "--arrival",
        choices=ARRIVALS,
        default="together",
        help="how the Twilio side times its writes. together (default, the load of every "
        "earlier figure): both tracks of a call in one write, every call on the same 20 ms "
        "tick. apart: as Twilio does, each track in its own write, the outbound 10 ms after "
        "the inbound, the calls in 4 phases 5 ms apart (twice the writes, 4x the ticker's "
        "wake-ups); a frame's send time is still its inbound's, so the added latency "
        "includes the half tick its outbound comes later",
    )
    parser.add_argument(
        "--proxy-cpu",
        type=int,
        help="CPU to pin the proxy to (default: the last one; the load gets the others)",
    )
    parser.add_argument(
        "--proxy-env",
        type=name_value,
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for the proxy (repeatable), e.g. CLIENT_QUEUE_SIZE=512",
    )
    parser.add_argument(
        "--nice",
        type=int,
        metavar="N",
        help="run the proxy, the fake and the load at this niceness (e.g. -10, as root) so "
        "that other work on a shared machine disturbs them less",
    )
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="before each run, wait up to SECONDS for the machine to be under 10%% busy "
        "(for shared machines; default: do not wait)",
    )
    parser.add_argument(
        "--ping-floods",
        type=argument(config.number_in(int, 0, 64), "count"),
        default=0,
        metavar="N",
        help="over the measured window, N connections flood /client with pings, reconnecting "
        "when closed (issue 11's attacker; its own process, on the load's CPUs; default 0)",
    )
    parser.add_argument(
        "--remote-watchers",
        action="store_true",
        help="also measure the path through Redis: calls on one proxy, their watchers on "
        "another, sharing a redis-server the benchmark starts; both paths side by side",
    )
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="also measure the tutorial's design under the same load, one run after the "
        "other, and report both and their ratios (with --sweep: both sweeps)",
    )
    parser.add_argument(
        "--rounds",
        type=count(),
        default=1,
        metavar="N",
        help="with --baseline: N runs of each, alternating which goes first (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="also print one JSON line")
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="FILE",
        help="record the proxy with py-spy over the window (raw collapsed stacks) into FILE",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument(
        "--sweep", action="store_true", help="find the largest N that holds real time"
    )
    sweep.add_argument("--sweep-start", type=int, default=50, help="first N (default 50)")
    sweep.add_argument("--sweep-max", type=int, default=2000, help="largest N (default 2000)")
    sweep.add_argument(
        "--sweep-retries",
        type=int,
        default=1,
        help="run a size again when it failed on a noisy machine (default: once)",
    )
    sweep.add_argument(
        "--sweep-resolution",
        type=int,
        default=25,
        help="stop bisecting when held and failed N are this close (default 25)",
    )


def _wait_quiet(max_wait_s: float) -> None:
    if max_wait_s > 0:
        busy = wait_until_quiet(max_wait_s)
        print(f"bench: machine {busy:.0%} busy before the run", file=sys.stderr, flush=True)


def _run_remote_watchers(args: argparse.Namespace, options: BenchOptions) -> int:
    """Both paths, one after the other; 0 if both held real time, else 1."""
    from .load import BenchError
    from .scale_out import run_remote_watchers
    from .scale_out_report import format_scale_out, scale_out_json

    if args.sweep:
        raise BenchError("--remote-watchers measures one size: it cannot be combined with --sweep")
    _wait_quiet(args.wait_quiet)
    report = event_loop.run(run_remote_watchers(options))
    print(format_scale_out(report))
    if args.json:
        print(json.dumps(scale_out_json(report)))
    return 0 if report.single.held and report.remote.held else 1


def _run_baseline(args: argparse.Namespace, options: BenchOptions) -> int:
    """`--rounds` rounds of the proxy and the baseline; 0 if every proxy run held, else 1."""
    from .baseline import run_side
    from .baseline_report import BaselineReport, Round, baseline_json, format_baseline

    rounds = []
    for n in range(args.rounds):
        baseline_first = n % 2 == 1
        order: tuple[Side, Side] = (
            ("baseline", "proxy") if baseline_first else ("proxy", "baseline")
        )
        got: dict[str, BenchReport] = {}
        for side in order:
            print(f"baseline: round {n + 1}, {side} ...", file=sys.stderr, flush=True)
            _wait_quiet(args.wait_quiet)
            got[side] = event_loop.run(run_side(options, side))
        rounds.append(Round(got["proxy"], got["baseline"], baseline_first))
    report = BaselineReport(tuple(rounds))
    print(format_baseline(report))
    if args.json:
        print(json.dumps(baseline_json(report)))
    return 0 if all(r.proxy.held for r in rounds) else 1


@dataclass(slots=True)
class _Sweep:
    """One sweep's state: the sizes tried and their runs (`step` runs the next size)."""

    args: argparse.Namespace
    options: BenchOptions
    side: Side = "proxy"
    label: str = ""
    reports: list[BenchReport] = field(default_factory=list)
    outcomes: dict[int, bool] = field(default_factory=dict)

    def step(self) -> bool:
        """Run the next size (again, on a noisy failure); False once the sweep is done."""
        from .baseline import run_side
        from .load import BenchError
        from .report import format_report

        n = next_sweep_size(
            self.outcomes,
            start=self.args.sweep_start,
            limit=self.args.sweep_max,
            resolution=self.args.sweep_resolution,
        )
        if n is None:
            return False
        for attempt in range(1 + max(0, self.args.sweep_retries)):
            print(
                f"sweep{self.label}: {n} calls (attempt {attempt + 1}) ...",
                file=sys.stderr,
                flush=True,
            )
            _wait_quiet(self.args.wait_quiet)
            options = replace(self.options, calls=n, profile=None)
            try:
                report = event_loop.run(run_side(options, self.side))
            except BenchError as exc:  # e.g. a proxy too busy to accept the calls
                print(f"sweep{self.label}: {n} calls could not run: {exc}", file=sys.stderr)
                self.outcomes[n] = False
                break
            self.reports.append(report)
            self.outcomes[n] = report.held
            print(format_report(report) + "\n", file=sys.stderr, flush=True)
            # Noise can sink a size the proxy holds; never the other way round.
            if report.held or not report.noisy:
                break
        if self.reports and self.reports[-1].load_saturated and not self.reports[-1].held:
            # Its failure may be the load's: it bounds the search (nothing larger is
            # tried), and the sweep bisects below it, where the load keeps up.
            print(
                f"sweep{self.label}: the load side saturated at {n} calls: searching below",
                file=sys.stderr,
            )
        return True


def _run_sweeps(args: argparse.Namespace, options: BenchOptions) -> int:
    """The proxy's sweep (and with --baseline the baseline's, their sizes alternating); 0 if
    the proxy held some size, else 1."""
    from .baseline_report import BaselineSweep, baseline_sweep_json, format_baseline_sweep
    from .report import format_sweep, sweep_json

    proxy = _Sweep(args, options, label=" (proxy)" if args.baseline else "")
    if not args.baseline:
        while proxy.step():
            pass
        print(format_sweep(proxy.reports))
        if args.json:
            print(sweep_json(proxy.reports))
        return 0 if any(proxy.outcomes.values()) else 1
    baseline = _Sweep(args, options, side="baseline", label=" (baseline)")
    going = [proxy, baseline]
    while going:
        going = [sweep for sweep in going if sweep.step()]
    both = BaselineSweep(tuple(proxy.reports), tuple(baseline.reports))
    print(format_baseline_sweep(both))
    if args.json:
        print(json.dumps(baseline_sweep_json(both)))
    return 0 if any(proxy.outcomes.values()) else 1


def run(args: argparse.Namespace) -> int:
    """Run one measurement or a sweep; 0 if the (last) run held real time, else 1."""
    from .load import BenchError, BenchOptions, run_bench
    from .report import format_report, report_json

    options = BenchOptions(
        calls=args.calls,
        subscribers=args.subscribers,
        duration_s=args.duration,
        warmup_s=args.warmup,
        chunk_ms=args.chunk_ms,
        result_ms=args.result_ms,
        interim=args.interim,
        proxy_cpu=args.proxy_cpu,
        nice=args.nice,
        proxy_env=dict(args.proxy_env),
        profile=args.profile,
        ping_floods=args.ping_floods,
        arrival=args.arrival,
    )
    try:
        if args.remote_watchers:
            if args.baseline:
                raise BenchError("--baseline cannot be combined with --remote-watchers")
            return _run_remote_watchers(args, options)
        if args.sweep:
            return _run_sweeps(args, options)
        if args.baseline:
            return _run_baseline(args, options)
        _wait_quiet(args.wait_quiet)
        report = event_loop.run(run_bench(options))
        print(format_report(report))
        if args.json:
            print(json.dumps(report_json(report)))
        if args.profile is not None and args.profile.exists():
            print(f"\nproxy profile ({args.profile}), most CPU by function (self time):")
            for frame, share in top_frames(args.profile.read_text()):
                print(f"  {share:6.1%}  {frame}")
        return 0 if report.held else 1
    except BenchError as exc:
        print(f"twilio-dg-proxy bench: {exc}", file=sys.stderr)
        return 2
