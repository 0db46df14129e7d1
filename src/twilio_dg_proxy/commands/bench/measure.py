"""The benchmark's arithmetic: latency mapping, statistics, completeness, verdict, sweep plan.

Pure: no sockets, no clock, no /proc. Times are seconds on one monotonic clock (Linux's
CLOCK_MONOTONIC is system-wide, so the proxy's and the load generator's stamps compare).
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_left
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ...twilio_simulator import pattern

__all__ = [
    "LOAD_SATURATED",
    "PATTERN_PERIOD",
    "REAL_TIME_MARGIN_MS",
    "CallCheck",
    "LoadVerdict",
    "Summary",
    "coverage_latencies",
    "net_latencies",
    "expected_stereo_sha256",
    "fake_stamp",
    "held_real_time",
    "load_verdict",
    "next_sweep_size",
    "percentile",
    "summarize",
    "top_frames",
    "window_range",
]

#: The sweep's criterion: p99 added audio latency above CHUNK_MS plus this is no longer real
#: time (chunking alone accounts for up to CHUNK_MS - 20 ms; 100 ms more is a queue forming).
REAL_TIME_MARGIN_MS = 100
#: The load side is saturated, and may itself be what delays the figures (which are then
#: lower bounds), when the generator or the fake Deepgram uses more than this share of a
#: core, or both together more than this share of the CPUs the load has.
LOAD_SATURATED = 0.80


@dataclass(frozen=True, slots=True)
class LoadVerdict:
    """Whether the load side was saturated over a run, and why, in words."""

    saturated: bool
    reason: str


def load_verdict(*, generator: float, fake: float, load_cpus: int) -> LoadVerdict:
    """The verdict on the load side from its processes' CPU (shares of one core) and the
    number of CPUs they had (`LOAD_SATURATED` is the threshold)."""
    limit = f"{LOAD_SATURATED:.0%}"
    cpus = max(load_cpus, 1)
    together = (generator + fake) / cpus
    of_cpus = f"of the load's {cpus} CPUs" if cpus > 1 else "of the load's CPU"
    for name, share in (("the generator", generator), ("the fake Deepgram", fake)):
        if share > LOAD_SATURATED:
            return LoadVerdict(True, f"{name} used {share:.0%} of a core (over {limit})")
    if together > LOAD_SATURATED:
        return LoadVerdict(True, f"together they used {together:.0%} {of_cpus} (over {limit})")
    return LoadVerdict(False, f"together {together:.0%} {of_cpus}, each at most {limit} of a core")


@dataclass(frozen=True, slots=True)
class Summary:
    """Count, median, 99th percentile and maximum of a set of latencies, in milliseconds."""

    count: int
    p50_ms: float
    p99_ms: float
    max_ms: float


def percentile(ordered: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0 < q <= 100) of ascending `ordered`, by nearest rank.

    Nearest rank is a value that was measured (no interpolation): p99 of 100 values is the
    99th smallest. Raises ValueError on an empty sequence.
    """
    if not ordered:
        raise ValueError("percentile of no values")
    rank = math.ceil(q / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


def summarize(seconds: Iterable[float]) -> Summary:
    """Summarise latencies given in seconds; all zero when there are none."""
    ordered = sorted(seconds)
    if not ordered:
        return Summary(0, 0.0, 0.0, 0.0)
    return Summary(
        count=len(ordered),
        p50_ms=percentile(ordered, 50) * 1000,
        p99_ms=percentile(ordered, 99) * 1000,
        max_ms=ordered[-1] * 1000,
    )


def coverage_latencies(
    sent: Sequence[float], audio_log: Iterable[tuple[float, int]], frame_bytes: int
) -> list[float]:
    """How long each sent frame took to be fully held by the receiver, in frame order.

    `sent[i]` is when frame i left (all its tracks); `audio_log` holds (time, cumulative bytes
    received) per message received, in order; frame i is held once `frame_bytes * (i + 1)`
    bytes have arrived (stereo: both tracks' 160 bytes of frame i, interleaved). The result has
    one latency per frame held, so ``len(sent) - len(result)`` frames never fully arrived.
    Extra bytes (silence padding) do not count as frames.
    """
    latencies: list[float] = []
    held = 0
    for received_at, total in audio_log:
        covered = min(total // frame_bytes, len(sent))
        while held < covered:
            latencies.append(received_at - sent[held])
            held += 1
    return latencies


def net_latencies(
    sent: Sequence[float], audio_log: Iterable[tuple[float, int]], frame_bytes: int
) -> list[float]:
    """`coverage_latencies` net of the chunking wait: for each frame, from the moment the
    last frame that its message completed left, to that message's arrival.

    A sender that waits to fill a chunk delays each frame by the time until the chunk's last
    frame is sent; this is the rest (processing and queueing), whatever the chunk size, so
    designs with different chunks compare. Same order and length as `coverage_latencies`.
    """
    latencies: list[float] = []
    held = 0
    for received_at, total in audio_log:
        covered = min(total // frame_bytes, len(sent))
        if covered > held:
            net = received_at - sent[covered - 1]
            latencies.extend([net] * (covered - held))
            held = covered
    return latencies


def window_range(times: Sequence[float], start: float, end: float) -> range:
    """The indices of ascending `times` that fall in [start, end)."""
    return range(bisect_left(times, start), bisect_left(times, end))


# The fake stamps every Results as its last field: `"fake": {"sent_at": <float>, "seq": <int>}`
# (json.dumps's spacing, or orjson's none).
_STAMP = re.compile(rb'"fake": ?\{"sent_at": ?([-+.0-9eE]+), ?"seq": ?([0-9]+)\}\}')
_STAMP_KEY = b'"fake":'


def fake_stamp(message: bytes) -> tuple[float, int] | None:
    """The fake Deepgram's (sent_at, seq) stamp of a Results message, or None if it has none.

    Reads only the message's tail, because decoding every message's JSON would cost the load
    generator more than the proxy spends forwarding it.
    """
    at = message.rfind(_STAMP_KEY)
    if at < 0:
        return None
    match = _STAMP.match(message, at)
    if match is None:
        return None
    return float(match[1]), int(match[2])


#: `pattern` repeats every 127 bytes (its docstring says so): one period, tiled, is the whole.
PATTERN_PERIOD = 127


def expected_stereo_sha256(offset: int, frames: int, frame_bytes: int = 160) -> str:
    """SHA-256 of what Deepgram must receive for a call that sent `frames` frames per track of
    `pattern(track, ..., offset=offset)`: the two tracks interleaved, inbound first."""
    size = frames * frame_bytes
    repeats = -(-size // PATTERN_PERIOD)
    # Tiling one period runs in C; building minutes of audio byte by byte would not.
    inbound = (pattern("inbound", PATTERN_PERIOD, offset=offset) * repeats)[:size]
    outbound = (pattern("outbound", PATTERN_PERIOD, offset=offset) * repeats)[:size]
    stereo = bytearray(2 * size)
    stereo[0::2] = inbound
    stereo[1::2] = outbound
    return hashlib.sha256(stereo).hexdigest()


@dataclass(frozen=True, slots=True)
class CallCheck:
    """What arrived for one call, against what was sent.

    `audio_exact`: Deepgram's stream hashes to the two tracks interleaved, byte for byte.
    `deliveries`: messages from Deepgram (Results and Metadata) each subscriber got in order
    and complete, summed over subscribers; `expected_deliveries` is what the fake sent times
    the subscribers.
    """

    audio_sent: int
    audio_received: int
    audio_exact: bool
    deliveries: int
    expected_deliveries: int
    failed: bool  # the proxy closed the call abnormally

    @property
    def complete(self) -> bool:
        """Nothing lost, nothing mixed up, nothing failed."""
        return (
            not self.failed
            and self.audio_exact
            and self.audio_received == self.audio_sent
            and self.deliveries == self.expected_deliveries
        )


def held_real_time(*, p99_added_ms: float, chunk_ms: int, complete: bool) -> tuple[bool, str]:
    """The sweep's verdict on one run and why: real time means p99 added audio latency within
    CHUNK_MS + `REAL_TIME_MARGIN_MS` and nothing lost."""
    bound = chunk_ms + REAL_TIME_MARGIN_MS
    if not complete:
        return False, "audio or results were lost, mixed up or late past the end"
    if p99_added_ms > bound:
        return (
            False,
            f"p99 added latency {p99_added_ms:.0f} ms > CHUNK_MS + {REAL_TIME_MARGIN_MS} ms "
            f"= {bound} ms",
        )
    return True, f"p99 added latency {p99_added_ms:.0f} ms <= {bound} ms and nothing lost"


def next_sweep_size(
    outcomes: Mapping[int, bool], *, start: int, limit: int, resolution: int
) -> int | None:
    """The next number of calls a sweep should try, or None when it is done.

    Doubles from `start` while every size held; after the first failure, bisects between the
    largest size held and the smallest that failed until they are within `resolution`. Sizes
    are multiples of `resolution`, never above `limit`.
    """
    held = max((n for n, ok in outcomes.items() if ok), default=0)
    failed = min((n for n, ok in outcomes.items() if not ok and n > held), default=None)
    if failed is None:
        if not outcomes:
            return min(start, limit)
        if held >= limit:
            return None
        return min(held * 2, limit)
    if failed - held <= resolution:
        return None
    middle = (held + failed) // 2
    middle -= middle % resolution
    if middle <= held:
        middle = held + resolution
    return middle if middle < failed else None


_LINE_NUMBER = re.compile(r":\d+\)$")


def top_frames(collapsed: str, count: int = 15) -> list[tuple[str, float]]:
    """The functions that used the most CPU in a py-spy ``--format raw`` profile (collapsed
    stacks, one ``frame;frame;... samples`` per line), as (innermost function, share of all
    samples); a function's lines are counted together.
    """
    self_samples: Counter[str] = Counter()
    total = 0
    for line in collapsed.splitlines():
        stack, _, samples = line.rpartition(" ")
        if not stack or not samples.isdigit() or samples == "0":
            continue
        total += int(samples)
        self_samples[_LINE_NUMBER.sub(")", stack.rsplit(";", 1)[-1])] += int(samples)
    if not total:
        return []
    return [(frame, n / total) for frame, n in self_samples.most_common(count)]
