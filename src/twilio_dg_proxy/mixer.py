"""Align Twilio's timestamped mu-law tracks on one timeline and interleave them.

Sans-I/O: `push()` media as it arrives, take ready audio with `pop_chunks()`, and call
`flush()` at the end of the call. No clock is read: time is Twilio's `timestamp`.

Each track keeps a buffer of the samples from `emitted` (the first sample not yet handed
out) to its write head. A packet lands at its timestamp; a gap before it becomes mu-law
silence; a packet for audio already handed out is late and dropped. Audio is handed out up
to the slowest track's head, except that a track more than `max_lag_ms` behind the fastest
(a callee still ringing, a stalled track) is padded with silence so audio keeps flowing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .twilio_events import Track

SAMPLES_PER_MS = 8  # 8 kHz, one byte per mu-law sample
SILENCE = 0xFF  # mu-law encoding of zero amplitude
CHANNEL_ORDER: tuple[Track, ...] = ("inbound", "outbound")  # caller left, callee right


@dataclass(slots=True)
class MixerStats:
    """What the mixer had to repair; counts are in packets or samples (bytes per track)."""

    packets: int = 0
    late_packets: int = 0  # dropped whole: all their audio had already been handed out
    late_samples: int = 0  # samples dropped from late or partly late packets
    gap_samples: int = 0  # silence written into holes inside a track (lost packets)
    lag_samples: int = 0  # silence written for a track lagging beyond max_lag_ms
    discontinuities: int = 0  # timestamp jumps too big to be packet loss: track re-anchored


class _TrackBuffer:
    """One track's pending samples; `buf[0]` is the sample at the mixer's `emitted`."""

    __slots__ = ("buf", "offset")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.offset = 0  # added to timestamp-derived positions after a discontinuity


class StereoMixer:
    """Timeline mixer for the tracks of one stream: one channel per track, inbound first.

    With both tracks the output is interleaved stereo (inbound byte, outbound byte, ...);
    with one track it is that track alone.
    """

    def __init__(
        self,
        tracks: Sequence[Track],
        *,
        chunk_ms: int,
        max_lag_ms: int,
        max_gap_ms: int = 2_000,
    ) -> None:
        """`max_gap_ms` bounds the silence one packet can cause: a timestamp that jumps
        further than that (forwards, or backwards beyond audio handed out) is a clock
        discontinuity, and the track is re-anchored instead of filled. This bounds memory;
        real packet loss leaves gaps of tens to hundreds of milliseconds."""
        if not tracks or len(set(tracks)) != len(tracks):
            raise ValueError(f"need one or two distinct tracks, got {tracks!r}")
        self.tracks = tuple(t for t in CHANNEL_ORDER if t in tracks)
        self.channels = len(self.tracks)
        self.chunk_samples = chunk_ms * SAMPLES_PER_MS
        self.max_lag = max_lag_ms * SAMPLES_PER_MS
        self.max_gap = max_gap_ms * SAMPLES_PER_MS
        self.stats = MixerStats()
        self.emitted = 0  # timeline position (in samples) of the next sample to hand out
        self._buffers = {track: _TrackBuffer() for track in self.tracks}
        # False only while no chunk can be ready: the ready audio ends at or before the end
        # of the track pushed last, so a push leaves a chunk ready only if its own track
        # then holds a chunk's worth. Most pushes do not, and `pop_chunks` returns at once.
        self._may_be_ready = False

    def push(self, track: Track, timestamp_ms: int, payload: bytes) -> bool:
        """Place `payload` (mu-law samples) on `track` at `timestamp_ms`. Returns whether a
        chunk may be ready: if not, `pop_chunks` would return nothing."""
        state = self._buffers[track]  # KeyError: the caller checked the track was announced
        self.stats.packets += 1
        buf = state.buf
        pos = timestamp_ms * SAMPLES_PER_MS + state.offset
        if pos - self.emitted == len(buf):  # the next packet, in order: nothing to repair
            buf += payload
        else:
            self._place(state, pos, payload)
        if len(buf) >= self.chunk_samples:
            self._may_be_ready = True
        return self._may_be_ready

    def _place(self, state: _TrackBuffer, pos: int, payload: bytes) -> None:
        """Place `payload` at timeline position `pos` of a track whose audio does not end
        there: across a discontinuity, after a gap, or over audio already there or sent."""
        buf = state.buf
        head = self.emitted + len(buf)
        if pos - head > self.max_gap or pos + len(payload) < self.emitted - self.max_gap:
            self.stats.discontinuities += 1
            state.offset += head - pos
            pos = head
        index = pos - self.emitted
        if index < 0:
            late = min(-index, len(payload))
            self.stats.late_samples += late
            if late == len(payload):
                self.stats.late_packets += 1
                return
            payload = payload[late:]
            index = 0
        if index > len(buf):
            self.stats.gap_samples += index - len(buf)
            buf.extend(bytes((SILENCE,)) * (index - len(buf)))
        # A slice assignment past the end grows the buffer; inside it, a re-sent or
        # reordered packet overwrites what stood there (silence from a gap, usually).
        buf[index : index + len(payload)] = payload

    def pop_chunks(self) -> list[bytes]:
        """Hand out every full chunk that is ready (`chunk_ms` of audio per chunk)."""
        if not self._may_be_ready:
            return []
        self._may_be_ready = False
        ready = self._ready_samples()
        chunks = []
        while ready >= self.chunk_samples:
            chunks.append(self._take(self.chunk_samples))
            ready -= self.chunk_samples
        return chunks

    def flush(self) -> bytes:
        """Hand out everything left, padding shorter tracks with silence (b"" if nothing)."""
        longest = max(len(state.buf) for state in self._buffers.values())
        self._may_be_ready = False
        return self._take(longest) if longest else b""

    def pending_samples(self) -> int:
        """Samples buffered on the longest track: the mixer's memory, in bytes per track."""
        return max(len(state.buf) for state in self._buffers.values())

    def _ready_samples(self) -> int:
        """How many samples from `emitted` can be handed out now."""
        lengths = [len(state.buf) for state in self._buffers.values()]
        return max(min(lengths), max(lengths) - self.max_lag)

    def _take(self, n: int) -> bytes:
        """Remove the next `n` samples of every track and return them interleaved."""
        parts = [self._take_from(state.buf, n) for state in self._buffers.values()]
        self.emitted += n
        if len(parts) == 1:
            return bytes(parts[0])
        out = bytearray(n * 2)
        out[0::2] = parts[0]
        out[1::2] = parts[1]
        return bytes(out)

    def _take_from(self, buf: bytearray, n: int) -> bytearray:
        """Remove the first `n` samples of `buf`, padded with silence if it holds fewer."""
        part = buf[:n]
        del buf[:n]  # cheap: bytearray deletes from the front by moving its start
        if len(part) < n:
            self.stats.lag_samples += n - len(part)
            part.extend(bytes((SILENCE,)) * (n - len(part)))
        return part
