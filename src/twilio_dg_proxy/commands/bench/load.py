"""One benchmark run: the proxy, the fake Deepgram and the load, then the figures.

Three processes: the proxy under test (``python -m twilio_dg_proxy``) pinned to one CPU; the
fake Deepgram (`fake_server`) and this one, the load generator, on the others. Calls are
`SimulatedCall`s whose media messages are rendered from templates and sent by one shared
ticker: every 20 ms both tracks of every call in one write, or each track on its own and the
calls spread over the tick (`arrival`); subscribers speak the /client protocol. The figures
come from the pure functions of `measure`, fed with what the fake and the subscribers
recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import time
from array import array
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from websockets.exceptions import InvalidHandshake

from ...server import IDLE_COLLECT_S
from ...twilio_simulator import FRAME_BYTES, FRAME_MS, SimulatedCall
from . import procfs
from .arrival import TIMINGS, Arrival, Timing
from .fake_server import FakeProcess, StreamRecord
from .flood import FloodProcess, FloodResult
from .measure import (
    PATTERN_PERIOD,
    CallCheck,
    coverage_latencies,
    expected_stereo_sha256,
    fake_stamp,
    held_real_time,
    net_latencies,
    summarize,
    window_range,
)
from .media_frames import MediaFrames
from .processes import (
    BenchError,
    Placement,
    ProxyProcess,
    Serve,
    one_proxy,
    plan_placement,
    profiled,
)
from .report import BenchReport, FloodReport
from .wire import WireClient

__all__ = ["BenchError", "BenchOptions", "run_bench"]

_TICK_S: Final = FRAME_MS / 1000
_STEREO_FRAME_BYTES: Final = 2 * FRAME_BYTES
# Calls start their audio spread over this many ticks (500 ms), so that their chunk and
# result boundaries are spread as real calls' would be, not all on the same tick.
_STAGGER_TICKS: Final = 25
# Within a tick, let the loop read between slices of this many calls: a subscriber's message
# that arrives mid-tick is then stamped at most one slice late, not one whole tick.
_TICK_SLICE: Final = 50
# Twilio-side and /client handshakes in flight at once (the listen backlog is 100).
_CONNECT_CONCURRENCY: Final = 32
_START_TIMEOUT_S: Final = 20.0
# How long the proxy's /healthz may take to answer at the end of a run.
_HEALTH_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run: `calls` calls with `subscribers` watchers each, measured for `duration_s`
    after `warmup_s`. The proxy gets CHUNK_MS=`chunk_ms`, Deepgram interim results only with
    `interim`, and `proxy_env` on top; the fake sends a final per channel every `result_ms`."""

    calls: int
    subscribers: int = 2
    duration_s: float = 10.0
    warmup_s: float = 1.0
    chunk_ms: int = 100
    result_ms: int = 250
    interim: bool = False
    proxy_cpu: int | None = None  # None: the last CPU this process may use
    nice: int | None = None  # scheduling niceness of the three processes (None: unchanged)
    proxy_env: Mapping[str, str] = field(default_factory=dict)
    profile: Path | None = None  # py-spy's raw profile of the proxy over the window
    ping_floods: int = 0  # connections flooding /client with pings over the window
    arrival: Arrival = "together"  # how the Twilio side times its writes (`arrival`)


class CallDriver:
    """One simulated call: its Twilio socket, its Deepgram stream's request id, and when
    each of its frames left."""

    __slots__ = (
        "call",
        "client",
        "frames",
        "media",
        "offset",
        "outbound",
        "request_id",
        "sent_at",
        "start_tick",
    )

    def __init__(
        self, call: SimulatedCall, client: WireClient, request_id: str, index: int
    ) -> None:
        self.call = call
        self.client = client
        self.request_id = request_id
        # Calls carry different audio (the pattern shifted) so a mix-up between calls shows.
        self.offset = index % PATTERN_PERIOD
        self.start_tick = index % _STAGGER_TICKS
        self.media = MediaFrames(call, self.offset)
        self.sent_at = array("d")
        self.frames = 0
        self.outbound: bytes | None = None  # the last frame's outbound, not yet written

    def send_frame(self) -> None:
        """Send the next 20 ms of both tracks in one write; nothing once the call is closed."""
        if self.client.is_open:
            self._send(self.media.tick(self.frames))

    def send_inbound(self) -> None:
        """Send the next 20 ms of the inbound track, and hold the outbound's for
        `send_outbound`; nothing once the call is closed."""
        if self.client.is_open:
            inbound, self.outbound = self.media.tracks(self.frames)
            self._send(inbound)

    def send_outbound(self) -> None:
        """Send the outbound frame held by `send_inbound`, if any."""
        outbound, self.outbound = self.outbound, None
        if outbound is not None and self.client.is_open:
            self.client.send_frames(outbound)

    def _send(self, data: bytes) -> None:
        """Write the next frame's first (or only) message: its send time is now."""
        self.sent_at.append(time.monotonic())
        self.client.send_frames(data)
        self.frames += 1

    def stop(self) -> None:
        """Send the outbound frame still held, then `stop`, and close, as Twilio does when
        the call ends."""
        if self.client.is_open:
            self.send_outbound()
            self.client.send_texts(self.call.stop(sequence=2 + 2 * self.frames).encode())
            self.client.close()


class Subscriber:
    """A /client watcher of one call: records each result's fake send time and arrival."""

    def __init__(self, driver: CallDriver) -> None:
        self.driver = driver
        self.listed: asyncio.Future[list[str]] = asyncio.get_running_loop().create_future()
        self.client: WireClient | None = None
        self.sent_at = array("d")
        self.received_at = array("d")
        self.in_order = 0  # results received with no gap so far: seq 0, 1, ...
        self.out_of_order = 0
        self.metadata: dict[str, Any] | None = None
        self.said_close = False
        self.unexpected = 0

    @property
    def delivered(self) -> int:
        """Messages from Deepgram received complete and in order (Results, then Metadata)."""
        return self.in_order + (1 if self.metadata is not None and not self.out_of_order else 0)

    @property
    def ended_normally(self) -> bool:
        """The call ended with the tutorial's `close` text and a normal close."""
        return self.said_close and self.client is not None and self.client.close_code == 1000

    def on_text(self, data: bytes, received_at: float) -> None:
        """Take one message from the proxy (called from `WireClient.data_received`)."""
        stamp = fake_stamp(data)
        if stamp is not None:
            sent_at, seq = stamp
            self.sent_at.append(sent_at)
            self.received_at.append(received_at)
            if seq == self.in_order:
                self.in_order += 1
            else:
                self.out_of_order += 1
            return
        if data == b"close":
            self.said_close = True
            return
        try:
            message = json.loads(data)
        except ValueError:
            self.unexpected += 1
            return
        if not self.listed.done() and isinstance(message, list):
            self.listed.set_result(message)
        elif isinstance(message, dict) and message.get("type") == "Metadata":
            self.metadata = message
        else:
            self.unexpected += 1


@dataclass(slots=True)
class _Window:
    """The measurement window: its bounds, samples of CPU and memory at both ends, and the
    ticker's lateness and work per tick within it."""

    proxy_pid: int
    fake_pid: int
    flood_pid: int | None = None
    first_tick: int = 0  # the ticker's ticks measured: [first_tick, last_tick)
    last_tick: int = 0
    start: float = 0.0  # when the first measured tick ran, and when the window was sampled last
    end: float = 0.0
    proxy: list[procfs.ProcSample] = field(default_factory=list)
    fake: list[procfs.ProcSample] = field(default_factory=list)
    generator: list[procfs.ProcSample] = field(default_factory=list)
    flood: list[procfs.ProcSample] = field(default_factory=list)
    machine: list[dict[int, float]] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    work: list[float] = field(default_factory=list)
    # Further server-side processes on the proxy's CPUs (`Serving.beside`), and their samples.
    beside: Mapping[str, int] = field(default_factory=dict)
    beside_samples: dict[str, list[procfs.ProcSample]] = field(default_factory=dict)
    on_sample: Callable[[], None] | None = None

    def sample(self) -> None:
        """Sample the processes' CPU and memory, and each CPU's busy time."""
        self.proxy.append(procfs.sample(self.proxy_pid))
        for name, pid in self.beside.items():
            self.beside_samples.setdefault(name, []).append(procfs.sample(pid))
        if self.on_sample is not None:
            self.on_sample()
        self.fake.append(procfs.sample(self.fake_pid))
        self.generator.append(procfs.sample(os.getpid()))
        if self.flood_pid is not None:
            self.flood.append(procfs.sample(self.flood_pid))
        self.machine.append(procfs.cpu_busy())

    @property
    def seconds(self) -> float:
        """The window's length."""
        return self.end - self.start

    def cpu_share(self, samples: list[procfs.ProcSample]) -> float:
        """A process's CPU over the window, as a share of one core."""
        return (samples[-1].cpu_s - samples[0].cpu_s) / self.seconds

    def others(self, placement: Placement) -> tuple[float, float]:
        """Busy time on the proxy's and on the load's CPUs that none of the run's processes
        used (other processes, interrupts), as shares of a core: this run's noise.
        Unpinned, every CPU is shared and both figures are the same."""
        start, end = self.machine[0], self.machine[-1]

        def busy(cpus: Iterable[int]) -> float:
            return sum(end[c] - start[c] for c in cpus if c in start) / self.seconds

        proxy = self.cpu_share(self.proxy)
        proxy += sum(map(self.cpu_share, self.beside_samples.values()))
        load = self.cpu_share(self.fake) + self.cpu_share(self.generator)
        if self.flood:
            load += self.cpu_share(self.flood)
        if placement.proxy is None or placement.load is None:
            both = max(0.0, busy(end) - proxy - load)
            return both, both
        return max(0.0, busy(placement.proxy) - proxy), max(0.0, busy(placement.load) - load)


class Load:
    """The calls and subscribers of one run, against one proxy and one fake."""

    def __init__(
        self,
        options: BenchOptions,
        proxy: ProxyProcess,
        fake: FakeProcess,
        watch: ProxyProcess | None = None,
    ) -> None:
        self.options = options
        self.proxy = proxy
        self.watch = proxy if watch is None else watch  # where the subscribers connect
        self.fake = fake
        self.calls: list[CallDriver] = []
        self.subscribers: list[Subscriber] = []
        self._connecting = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    async def open(self) -> None:
        """Start every call and subscribe its watchers; return once the proxy counts them all.

        Calls start one at a time, so that the fake's next stream is this call's. Watchers on
        another instance subscribe once it lists every call.
        """
        twilio_url = f"ws://127.0.0.1:{self.proxy.port}/twilio"
        elsewhere = self.watch is not self.proxy
        try:
            async with asyncio.TaskGroup() as tasks:
                for index in range(self.options.calls):
                    call = SimulatedCall()
                    client = await WireClient.connect(twilio_url)
                    client.send_texts(call.connected().encode(), call.start().encode())
                    request_id = await self.fake.next_stream(timeout=_START_TIMEOUT_S)
                    driver = CallDriver(call, client, request_id, index)
                    self.calls.append(driver)
                    for _ in range(0 if elsewhere else self.options.subscribers):
                        tasks.create_task(self._subscribe(driver))
                if elsewhere:
                    await self._listed_by_watch()
                    for driver in self.calls:
                        for _ in range(self.options.subscribers):
                            tasks.create_task(self._subscribe(driver))
        except* (OSError, TimeoutError, InvalidHandshake, BenchError) as group:
            raise BenchError(
                f"setting up call {len(self.calls) + 1} of {self.options.calls} failed: "
                f"{group.exceptions[0]!r}"
            ) from None
        expected = (self.options.calls, self.options.calls * self.options.subscribers)
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:
                health = await self.watch.health()
                if (health["calls"], health["subscribers"]) == expected:
                    return
                await asyncio.sleep(0.05)

    async def _listed_by_watch(self) -> None:
        """Wait until the watchers' instance counts every call (its `calls` is the
        cluster's), so that its call list, sent on connecting, holds them all."""
        async with asyncio.timeout(_START_TIMEOUT_S):
            while True:  # polled: /healthz is the only view a child process gives
                if (await self.watch.health())["calls"] == self.options.calls:
                    return
                await asyncio.sleep(0.05)

    async def _subscribe(self, driver: CallDriver) -> None:
        subscriber = Subscriber(driver)
        self.subscribers.append(subscriber)
        async with self._connecting:
            subscriber.client = await WireClient.connect(
                f"ws://127.0.0.1:{self.watch.port}/client", subscriber.on_text
            )
            async with asyncio.timeout(_START_TIMEOUT_S):
                listed = await subscriber.listed
        if driver.call.call_sid not in listed:
            raise BenchError(f"call {driver.call.call_sid} is not in the proxy's call list")
        subscriber.client.send_texts(driver.call.call_sid.encode())

    async def stream(self, window: _Window, window_started: asyncio.Future[None]) -> None:
        """Send every call's audio in real time from one ticker, sampling `window` at its ends;
        `window_started` resolves when it opens."""
        timing = TIMINGS[self.options.arrival]
        warmup_ticks = round(self.options.warmup_s / _TICK_S)
        first_measured = _STAGGER_TICKS + warmup_ticks
        last = first_measured + round(self.options.duration_s / _TICK_S)
        window.first_tick, window.last_tick = first_measured, last
        ticker = _Ticker(timing, self.calls, last, origin=time.monotonic() + _TICK_S)
        first_slot, end_slot = first_measured * timing.slots, last * timing.slots
        for slot in range(end_slot):
            due, began = await ticker.wait(slot)
            if slot == first_slot:
                window.start = began
                window.sample()
                window_started.set_result(None)
            await ticker.write(slot)
            if slot >= first_slot:
                window.lags.append(began - due)
                window.work.append(time.monotonic() - began)
        window.end = ticker.due(end_slot)
        await asyncio.sleep(max(window.end - time.monotonic(), 0.0))
        # CPU shares are over the time between the samples: a late ticker samples late.
        window.end = max(window.end, time.monotonic())
        window.sample()
        # The outbound frames the last tick's later phases still hold (`apart`), on time.
        for slot in range(end_slot, timing.total_slots(last)):
            await ticker.wait(slot)
            await ticker.write(slot)

    async def finish(self, within: float) -> dict[str, StreamRecord]:
        """End every call as Twilio would; wait until the watchers are closed and Deepgram's
        streams too, then return what the fake recorded of each stream."""
        for driver in self.calls:
            driver.stop()
        waits: list[Awaitable[object]] = [d.client.closed for d in self.calls]
        waits += [s.client.closed for s in self.subscribers if s.client is not None]
        began = time.monotonic()
        try:
            async with asyncio.timeout(within):
                await asyncio.gather(*waits)
        except TimeoutError:
            pass  # what did not end shows up as incomplete
        return await self.fake.streams(wait_s=max(1.0, within - (time.monotonic() - began)))

    def abort(self) -> None:
        """Drop every connection still open (after a failure or a timeout)."""
        for driver in self.calls:
            driver.client.abort()
        for subscriber in self.subscribers:
            if subscriber.client is not None:
                subscriber.client.abort()


class _Ticker:
    """What each call writes at each slot of a run of `ticks` ticks (`arrival.Timing`): call
    i joins at its start tick, in phase i % `timing.slots`."""

    def __init__(
        self, timing: Timing, calls: Iterable[CallDriver], ticks: int, origin: float
    ) -> None:
        self.timing = timing
        self.ticks = ticks
        self.origin = origin  # when slot 0 is due
        self._starting: dict[int, list[tuple[int, CallDriver]]] = {}
        for index, driver in enumerate(calls):
            joining = self._starting.setdefault(driver.start_tick, [])
            joining.append((index % timing.slots, driver))
        self._phases: list[list[CallDriver]] = [[] for _ in range(timing.slots)]
        self._send_frame = CallDriver.send_inbound if timing.split else CallDriver.send_frame

    def due(self, slot: int) -> float:
        """When `slot` is due (time.monotonic())."""
        return self.origin + slot * self.timing.slot_s

    async def wait(self, slot: int) -> tuple[float, float]:
        """Wait until `slot` is due; when it was due, and when it began."""
        due = self.due(slot)
        # Even when late, yield: the subscribers run on this loop too.
        await asyncio.sleep(max(due - time.monotonic(), 0.0))
        return due, time.monotonic()

    async def write(self, slot: int) -> None:
        """Write what `slot` is for: the next frame of the calls in its phase, and the
        outbound frames held since half a tick ago."""
        tick, phase = divmod(slot, self.timing.slots)
        if phase == 0:
            for joined, driver in self._starting.pop(tick, ()):
                self._phases[joined].append(driver)
        frames, outbound = self.timing.writes(slot, self.ticks)
        if frames is not None:
            await _each(self._phases[frames], self._send_frame)
        if outbound is not None:
            await _each(self._phases[outbound], CallDriver.send_outbound)


async def _each(drivers: list[CallDriver], send: Callable[[CallDriver], None]) -> None:
    """`send` for every driver, letting the loop read between slices of them."""
    for first in range(0, len(drivers), _TICK_SLICE):
        if first:
            await asyncio.sleep(0)
        for driver in drivers[first : first + _TICK_SLICE]:
            send(driver)


def check_call(
    driver: CallDriver, stream: StreamRecord | None, subscribers: list[Subscriber]
) -> CallCheck:
    """Compare what arrived for `driver`'s call with what it sent."""
    expected = expected_stereo_sha256(driver.offset, driver.frames)
    exact = (
        stream is not None
        and bool(subscribers)
        and all(
            s.metadata is not None
            and s.metadata.get("sha256") == expected
            and s.metadata.get("request_id") == stream.request_id
            for s in subscribers
        )
    )
    return CallCheck(
        audio_sent=driver.frames * _STEREO_FRAME_BYTES,
        audio_received=stream.audio_bytes if stream else 0,
        audio_exact=exact,
        deliveries=sum(s.delivered for s in subscribers),
        expected_deliveries=(stream.sent_count if stream else 0) * len(subscribers),
        failed=stream is None
        or not stream.closed
        or driver.client.close_code != 1000
        or not all(s.ended_normally for s in subscribers),
    )


def _raise_fd_limit(needed: int) -> None:
    """Allow `needed` open files if the hard limit permits (the children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        limit = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))


def _proxy_env(options: BenchOptions, deepgram_url: str) -> dict[str, str]:
    env = dict(os.environ)
    # A proxy in asyncio debug or development mode would measure the debugger.
    for name in ("PYTHONASYNCIODEBUG", "PYTHONDEVMODE"):
        env.pop(name, None)
    env.update(
        {
            "DEEPGRAM_URL": deepgram_url,
            "DEEPGRAM_API_KEY": "",
            "DEEPGRAM_PARAMS": f"interim_results={'true' if options.interim else 'false'}",
            "CHUNK_MS": str(options.chunk_ms),
            "LOG_LEVEL": "INFO",  # its "listening on" line gives the port
            "DRAIN_TIMEOUT": "2",
        }
    )
    env.update(options.proxy_env)
    return env


async def run_bench(options: BenchOptions, serve: Serve = one_proxy) -> BenchReport:
    """Run the benchmark once and measure it. `serve` starts the server side (default: one
    proxy for the calls and their watchers)."""
    if options.calls < 1 or options.subscribers < 1 or options.duration_s <= 0:
        raise BenchError("need at least one call, one subscriber per call and a duration")
    placement = plan_placement(options.proxy_cpu)
    _raise_fd_limit(64 + 4 * options.calls * (options.subscribers + 2))
    saved = os.sched_getaffinity(0) if placement.load is not None else None
    saved_nice = os.getpriority(os.PRIO_PROCESS, 0)
    if placement.load is not None:
        os.sched_setaffinity(0, placement.load)  # the fake's process inherits it
    if options.nice is not None:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, options.nice)  # the children inherit it
        except PermissionError:
            raise BenchError(f"--nice {options.nice}: not permitted (below 0 needs root)") from None
    try:
        async with FakeProcess.started(options.result_ms) as fake:
            async with serve(_proxy_env(options, fake.url), placement) as serving:
                proxy = serving.proxy
                idle = procfs.sample(proxy.pid)
                load = Load(options, proxy, fake, serving.watch)
                window = _Window(
                    proxy.pid, fake.pid, beside=serving.beside, on_sample=serving.on_sample
                )
                floods: FloodResult | None = None
                try:
                    await load.open()
                    started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    async with contextlib.AsyncExitStack() as stack:
                        flood: FloodProcess | None = None
                        if options.ping_floods:
                            flood = await stack.enter_async_context(
                                FloodProcess.started(
                                    proxy.port, options.ping_floods, options.duration_s
                                )
                            )
                            window.flood_pid = flood.pid
                            started.add_done_callback(flood.go)
                        await stack.enter_async_context(
                            profiled(options.profile, proxy.pid, options.duration_s, started)
                        )
                        await load.stream(window, started)
                        if flood is not None:
                            floods = await _flood_result(flood)
                    # A proxy that kept up ends its calls in well under a second.
                    streams = await load.finish(within=30 + options.duration_s)
                finally:
                    load.abort()
                totals = await _final_totals(proxy)
                # Let the proxy free what the calls held (it collects once idle).
                await asyncio.sleep(IDLE_COLLECT_S + 1)
                after = procfs.sample(proxy.pid)
                problems = proxy.problems + (
                    serving.watch.problems if serving.watch is not proxy else 0
                )
                where = serving.placement
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
        if options.nice is not None:
            with contextlib.suppress(PermissionError):  # raising it back needs root too
                os.setpriority(os.PRIO_PROCESS, 0, saved_nice)
    report = _report(
        options, placement, load, window, streams, idle, after, problems, floods, totals
    )
    beside = {name: window.cpu_share(samples) for name, samples in window.beside_samples.items()}
    return replace(report, beside_cpu=beside, placement=where or report.placement)


async def _flood_result(flood: FloodProcess) -> FloodResult:
    try:
        return await flood.result()
    except (OSError, TimeoutError, ValueError) as exc:
        raise BenchError(f"the ping floods gave no result: {exc!r}") from None


async def _final_totals(proxy: ProxyProcess) -> dict[str, Any]:
    """The proxy's counters since it started (/healthz's "totals"), or {} if it cannot say
    in time (a proxy too starved to answer)."""
    try:
        async with asyncio.timeout(_HEALTH_TIMEOUT_S):
            health = await proxy.health()
    except (OSError, TimeoutError, ValueError):
        return {}
    totals = health.get("totals")
    return totals if isinstance(totals, dict) else {}


def _report(
    options: BenchOptions,
    placement: Placement,
    load: Load,
    window: _Window,
    streams: Mapping[str, StreamRecord],
    idle: procfs.ProcSample,
    after: procfs.ProcSample,
    problems: int,
    floods: FloodResult | None,
    totals: Mapping[str, Any],
) -> BenchReport:
    watchers: dict[str, list[Subscriber]] = {d.request_id: [] for d in load.calls}
    for subscriber in load.subscribers:
        watchers[subscriber.driver.request_id].append(subscriber)
    added: list[float] = []
    added_net: list[float] = []
    checks: list[CallCheck] = []
    for driver in load.calls:
        stream = streams.get(driver.request_id)
        checks.append(check_call(driver, stream, watchers[driver.request_id]))
        if stream is None:
            continue
        # By tick, not by send time: a late tick's frames still belong to the window.
        measured = slice(
            window.first_tick - driver.start_tick, window.last_tick - driver.start_tick
        )
        added += coverage_latencies(driver.sent_at, stream.audio_log, _STEREO_FRAME_BYTES)[measured]
        added_net += net_latencies(driver.sent_at, stream.audio_log, _STEREO_FRAME_BYTES)[measured]
    fanout: list[float] = []
    for subscriber in load.subscribers:
        stamped = window_range(subscriber.sent_at, window.start, window.end)
        fanout += (subscriber.received_at[i] - subscriber.sent_at[i] for i in stamped)
    proxy_cpu = window.cpu_share(window.proxy)
    others_on_proxy, others_on_load = window.others(placement)
    added_summary = summarize(added)
    complete = sum(c.complete for c in checks)
    held, verdict = held_real_time(
        p99_added_ms=added_summary.p99_ms,
        chunk_ms=options.chunk_ms,
        complete=complete == len(checks),
    )
    return BenchReport(
        calls=options.calls,
        subscribers_per_call=options.subscribers,
        duration_s=options.duration_s,
        chunk_ms=options.chunk_ms,
        result_ms=options.result_ms,
        interim=options.interim,
        placement=placement.describe(),
        load_cpus=len(placement.load) if placement.load is not None else 1,
        proxy_cpu_share=proxy_cpu,
        proxy_cpu_ms_per_call_s=proxy_cpu * 1000 / options.calls,
        proxy_rss_idle=idle.rss,
        proxy_rss_loaded=window.proxy[-1].rss,
        proxy_rss_after=after.rss,
        proxy_log_problems=problems,
        added=added_summary,
        added_net=summarize(added_net),
        fanout=summarize(fanout),
        audio_sent=sum(c.audio_sent for c in checks),
        audio_received=sum(c.audio_received for c in checks),
        calls_exact=sum(c.audio_exact for c in checks),
        calls_complete=complete,
        calls_failed=sum(c.failed for c in checks),
        results_sent=sum(s.sent_count for s in streams.values()),
        deliveries=sum(c.deliveries for c in checks),
        expected_deliveries=sum(c.expected_deliveries for c in checks),
        generator_cpu_share=window.cpu_share(window.generator),
        fake_cpu_share=window.cpu_share(window.fake),
        tick_lag=summarize(window.lags),
        tick_work=summarize(window.work),
        others_on_proxy_cpu=others_on_proxy,
        others_on_load_cpu=others_on_load,
        held=held,
        verdict=verdict,
        deepgram_streams=len(streams),
        deepgram_reconnects=_count(totals, "deepgram_reconnects"),
        floods=None if floods is None else _flood_report(floods, window, totals),
        arrival=options.arrival,
    )


def _count(totals: Mapping[str, Any], name: str) -> int | None:
    value = totals.get(name)
    return value if isinstance(value, int) else None


def _flood_report(floods: FloodResult, window: _Window, totals: Mapping[str, Any]) -> FloodReport:
    return FloodReport(
        flooders=floods.flooders,
        seconds=floods.seconds,
        pings_sent=floods.pings_sent,
        pongs_received=floods.pongs_received,
        connections=floods.connections,
        refused=floods.refused,
        connect_errors=floods.connect_errors,
        closes=dict(floods.closes),
        drops=floods.drops,
        cpu_share=window.cpu_share(window.flood) if len(window.flood) > 1 else 0.0,
        proxy_control_floods=_count(totals, "control_floods"),
    )
