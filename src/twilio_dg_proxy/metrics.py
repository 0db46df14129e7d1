"""Prometheus metrics (`GET /metrics`), with the official `prometheus_client`.

Names follow Prometheus' conventions: the `twilio_dg_proxy_` prefix, base units in the name
(`_seconds`, `_bytes`), `_total` on counters. The list, and what each means:
docs/observability.md.

Cost on the hot path: the totals the proxy already keeps as plain integers (`HubCounters`)
are copied into Prometheus counters once a second and at each scrape (`sync`), not per
message; per message there is at most one histogram observation and one integer addition
(`audio_sent`, `result_delivered`), and the observation is counted by a `tally.Tally`, added
to the Histogram at the same `sync`.

Several workers (WORKERS=N): `prometheus_client`'s multiprocess mode. The supervisor sets
PROMETHEUS_MULTIPROC_DIR (a fresh directory) for its workers before they import this
module; each worker writes its values to files there, and whichever worker takes a scrape
reads every worker's files (`MultiProcessCollector`). Counters of a dead worker stay
counted; its gauges (`livesum`) go when the supervisor calls `forget_worker`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import NamedTuple

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
    multiprocess,
)

from .hub import HubCounters
from .observations import (
    CALL_ENDS,
    DEEPGRAM_FAILURES,
    CallEnd,
    DeepgramFailure,
    Observer,
)
from .tally import Tally

PREFIX = "twilio_dg_proxy"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = CONTENT_TYPE_LATEST

# Buckets in seconds. Audio: a chunk's first frame waits about CHUNK_MS (100 ms by default)
# for the chunk to fill, so the buckets are dense around 0.1–0.3 s. Fan-out: a few ms when
# all is well. Opening a Deepgram stream: a TLS handshake and an upgrade, 0.1–1 s. Loop lag:
# 1 ms is noise (uvloop's timer resolution), 100 ms a saturated core.
AUDIO_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.5, 1.0, 2.5, 5.0)
FANOUT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
OPEN_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)

SYNC_INTERVAL_S = 1.0  # how stale another worker's counters may be in a scrape
LAG_INTERVAL_S = 0.5  # how often the event loop's lag is sampled


class Gauges(NamedTuple):
    """This process's current figures."""

    calls: int  # calls streamed here
    subscribers: int  # /client subscriptions and viewer subscriptions here
    viewers: int  # /viewer/ws connections here
    pending: int  # /twilio connections whose start is not accepted yet
    ready: bool


def multiprocess_dir() -> str | None:
    """The directory of multiprocess mode, when it is on (set before this process started)."""
    return os.environ.get(MULTIPROC_ENV) or None


class ProxyMetrics(Observer):
    """Every metric of one proxy process, in its own registry; an `Observer` of the calls
    that passes Deepgram's outcomes on to `also` (readiness)."""

    def __init__(self, also: Observer) -> None:
        self.also = also
        self.registry = CollectorRegistry()
        if multiprocess_dir() is None:
            # Custom collectors do not work in multiprocess mode: process figures only alone.
            ProcessCollector(registry=self.registry)
        self._make_gauges()
        self._make_counters()
        self._make_histograms()
        # The hot path's two histograms, counted cheaply and added at each `sync`.
        self._audio = Tally(self.audio_latency)
        self._fanout = Tally(self.fanout_latency)
        self._observe_audio = self._audio.observe
        self._observe_fanout = self._fanout.observe
        # Per-message and per-event totals, copied to the counters by `sync`.
        self.audio_bytes = 0
        self.delivered = 0
        self.bad_input = 0
        self.streams_opened = 0
        self.ended = dict.fromkeys(CALL_ENDS, 0)
        self.failures = dict.fromkeys(DEEPGRAM_FAILURES, 0)
        self.reconnects = dict.fromkeys(DEEPGRAM_FAILURES, 0)
        self._copied: dict[Counter, float] = {}  # what `sync` has added to each counter

    # The Observer: the first two are the hot path.

    def audio_sent(self, size: int, waited_s: float | None) -> None:
        self.audio_bytes += size
        if waited_s is not None:
            self._observe_audio(waited_s)

    def result_delivered(self, waited_s: float) -> None:
        self.delivered += 1
        self._observe_fanout(waited_s)

    def deepgram_opened(self, open_s: float) -> None:
        self.streams_opened += 1
        self.deepgram_open.observe(open_s)
        self.also.deepgram_opened(open_s)

    def deepgram_failed(self, failure: DeepgramFailure) -> None:
        self.failures[failure] += 1
        self.also.deepgram_failed(failure)

    def deepgram_reconnected(self, failure: DeepgramFailure) -> None:
        self.reconnects[failure] += 1
        self.also.deepgram_reconnected(failure)

    def call_ended(self, how: CallEnd) -> None:
        self.ended[how] += 1

    def refused_bad_input(self) -> None:
        self.bad_input += 1

    # Copying the totals, exposing.

    def sync(self, counters: HubCounters, gauges: Gauges) -> None:
        """Bring every counter up to the totals (adding only what is new), add the tallied
        observations to their histograms, and set the gauges. Cheap: a few dozen integer
        comparisons."""
        self._audio.flush()
        self._fanout.flush()
        self.calls_active.set(gauges.calls)
        self.subscribers.set(gauges.subscribers)
        self.viewers.set(gauges.viewers)
        self.pending.set(gauges.pending)
        self.ready.set(1 if gauges.ready else 0)
        c = counters
        totals: list[tuple[Counter, int | float]] = [
            (self.calls_started, c.calls),
            (self.subscriptions, c.subscriptions),
            (self.published, c.published),
            (self.delivered_total, self.delivered),
            (self.evicted, c.evicted),
            (self.late_packets, c.late_packets),
            (self.discontinuities, c.discontinuities),
            (self.gaps_filled, c.gap_ms / 1000),
            (self.unknown_events, c.unknown_events),
            (self.audio_sent_bytes, self.audio_bytes),
            (self.audio_dropped_bytes, c.audio_dropped_bytes),
            (self.deepgram_streams, self.streams_opened),
            (self.refusals.labels("auth"), c.refused_unauthorized),
            (self.refusals.labels("limits"), c.refused_over_limit + c.refused_pending),
            (self.refusals.labels("bad_input"), self.bad_input),
            (self.dropped.labels("control_frames"), c.control_floods),
            (self.dropped.labels("write_buffer"), c.write_buffer_overflows),
            (self.redis_dropped, c.redis_dropped),
            (self.redis_errors, c.redis_errors),
            (self.remote_calls_lost, c.remote_calls_lost),
            (self.transcripts.labels("stored"), c.transcripts_stored),
            (self.transcripts.labels("lost"), c.transcripts_lost),
            (self.store_errors, c.store_errors),
            (self.finals_dropped, c.transcript_finals_dropped),
            (self.webhook_events.labels("delivered"), c.webhooks_delivered),
            (self.webhook_events.labels("retried"), c.webhooks_retried),
            (self.webhook_events.labels("failed"), c.webhooks_failed),
            (self.webhook_events.labels("dropped"), c.webhooks_dropped),
        ]
        totals += [(self.calls_ended.labels(how), n) for how, n in self.ended.items()]
        totals += [(self.deepgram_failures.labels(r), n) for r, n in self.failures.items()]
        totals += [(self.deepgram_reconnects.labels(r), n) for r, n in self.reconnects.items()]
        for counter, total in totals:
            self._advance(counter, total)

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or in multiprocess mode every
        worker's (read from their files)."""
        path = multiprocess_dir()
        if path is None:
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        # prometheus_client's multiprocess module has no type hints.
        multiprocess.MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]
        return generate_latest(registry)

    async def run(
        self, figures: Callable[[], tuple[HubCounters, Gauges]], *, lag_interval_s: float
    ) -> None:
        """Forever: sync every SYNC_INTERVAL_S (so another worker's scrape sees this one's
        figures), and sample the event loop's lag every `lag_interval_s`."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._sync_every(figures))
            tasks.create_task(sample_loop_lag(self.loop_lag.observe, lag_interval_s))

    async def _sync_every(self, figures: Callable[[], tuple[HubCounters, Gauges]]) -> None:
        while True:
            self.sync(*figures())
            await asyncio.sleep(SYNC_INTERVAL_S)

    def _advance(self, counter: Counter, total: float) -> None:
        added = total - self._copied.get(counter, 0)
        if added > 0:
            counter.inc(added)
            self._copied[counter] = total

    # Declarations.

    def _make_gauges(self) -> None:
        def gauge(name: str, doc: str) -> Gauge:
            # livesum: the sum over the workers alive (a dead worker's value goes with it).
            return Gauge(
                f"{PREFIX}_{name}", doc, registry=self.registry, multiprocess_mode="livesum"
            )

        self.calls_active = gauge("calls_active", "Calls streaming through this proxy now")
        self.subscribers = gauge(
            "subscribers", "Subscriptions to calls now (/client clients and viewer follows)"
        )
        self.viewers = gauge("viewers", "Web viewer (/viewer/ws) connections now")
        self.pending = gauge("pending_streams", "/twilio connections not started yet")
        self.ready = gauge("ready", "1 when ready for new calls (GET /readyz), per process")

    def _make_counters(self) -> None:
        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(f"{PREFIX}_{name}", doc, labels, registry=self.registry)

        self.calls_started = counter("calls_started", "Calls started")
        self.calls_ended = counter("calls_ended", "Calls ended, by how", ("how",))
        self.deepgram_streams = counter("deepgram_streams_opened", "Deepgram streams opened")
        self.deepgram_failures = counter(
            "deepgram_failures", "Deepgram streams that failed to open or dropped", ("reason",)
        )
        self.deepgram_reconnects = counter(
            "deepgram_reconnects", "Deepgram streams reopened mid-call, by the failure", ("reason",)
        )
        self.refusals = counter(
            "refusals", "Connections refused or closed at once, by reason", ("reason",)
        )
        self.dropped = counter(
            "connections_dropped", "Connections dropped for breaking a limit", ("limit",)
        )
        self.subscriptions = counter("subscriptions", "Subscriptions made to calls")
        self.evicted = counter("watchers_evicted", "Watchers disconnected for falling behind")
        self.late_packets = counter("late_packets", "Twilio packets dropped as late or repeated")
        self.discontinuities = counter(
            "discontinuities", "Twilio timestamp jumps too large to fill (re-anchored)"
        )
        self.gaps_filled = counter(
            "audio_gaps_filled_seconds", "Seconds of lost Twilio audio filled with silence"
        )
        self.unknown_events = counter("unknown_twilio_events", "Unknown Twilio events ignored")
        self.audio_sent_bytes = counter("audio_sent_bytes", "Bytes of audio sent to Deepgram")
        self.audio_dropped_bytes = counter(
            "audio_dropped_bytes", "Bytes of audio dropped during Deepgram outages"
        )
        self.published = counter("results_published", "Deepgram messages published to watchers")
        self.delivered_total = counter(
            "results_delivered", "Deepgram messages written to watchers (one per watcher)"
        )
        self.redis_dropped = counter(
            "redis_dropped_messages", "Messages never published to Redis (its buffer was full)"
        )
        self.redis_errors = counter("redis_errors", "Failed round trips to Redis (retried)")
        self.remote_calls_lost = counter(
            "remote_calls_lost", "Calls ended here because their instance vanished"
        )
        self.transcripts = counter(
            "transcripts", "Ended calls' transcripts: stored, or lost", ("outcome",)
        )
        self.store_errors = counter("store_errors", "Failed attempts to use the store (retried)")
        self.finals_dropped = counter(
            "transcript_finals_dropped",
            "Final results never stored: the store's queue was full (the call is truncated)",
        )
        self.webhook_events = counter(
            "webhook_events",
            "Webhook events: delivered, retried (a failed attempt), failed (given up), dropped",
            ("outcome",),
        )

    def _make_histograms(self) -> None:
        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"{PREFIX}_{name}", doc, buckets=buckets, registry=self.registry)

        self.audio_latency = histogram(
            "audio_latency_seconds",
            "From the first Twilio frame of a chunk arriving to the chunk sent to Deepgram",
            AUDIO_BUCKETS,
        )
        self.fanout_latency = histogram(
            "fanout_latency_seconds",
            "From a Deepgram message arriving to its being written to one watcher",
            FANOUT_BUCKETS,
        )
        self.deepgram_open = histogram(
            "deepgram_open_seconds", "Time to open a Deepgram stream", OPEN_BUCKETS
        )
        self.loop_lag = histogram(
            "event_loop_lag_seconds",
            f"How late the event loop ran a timer, sampled every {LAG_INTERVAL_S} s",
            LAG_BUCKETS,
        )


async def sample_loop_lag(observe: Callable[[float], None], interval_s: float) -> None:
    """Forever: sleep `interval_s` and observe how much longer than that it took (the time
    the loop was busy with other work when the timer was due)."""
    while True:
        start = time.monotonic()
        await asyncio.sleep(interval_s)
        observe(max(0.0, time.monotonic() - start - interval_s))


@contextmanager
def multiprocess_directory() -> Iterator[str]:
    """For a supervisor: a fresh, empty directory for its workers' metrics, named in
    PROMETHEUS_MULTIPROC_DIR (inherited by the workers it starts), removed at the end. An
    existing PROMETHEUS_MULTIPROC_DIR is used instead, emptied first: the files of a previous
    run would be counted again."""
    given = multiprocess_dir()
    if given is not None:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.remove(os.path.join(given, name))
        yield given
        return
    made = tempfile.mkdtemp(prefix="twilio-dg-proxy-metrics-")
    os.environ[MULTIPROC_ENV] = made
    try:
        yield made
    finally:
        del os.environ[MULTIPROC_ENV]
        shutil.rmtree(made, ignore_errors=True)


def forget_worker(pid: int) -> None:
    """For a supervisor: a worker exited; drop its live gauges (its counters stay counted)."""
    path = multiprocess_dir()
    if path is not None:
        multiprocess.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]  # untyped
