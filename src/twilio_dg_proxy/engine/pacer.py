"""The interim-results rate limit of one channel (pure: the caller passes the clock).

Whisper has no streaming mode: an interim result re-decodes the whole utterance so far, which
costs about as much as a final. `InterimPacer` bounds that cost: after an interim decode of a
channel ends, the next one waits `interval_s`, and only happens once the utterance has grown
by `min_growth_s` of audio. Counting the interval from the end of a decode, not its start,
keeps a share of every worker free for finals however slow decodes get (a loaded machine
gets fewer interims, never a backlog).

The caller decodes a channel's requests one at a time and asks the pacer only while its
channel is idle, so an interim that comes due during a decode is skipped, never queued.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["InterimPacer"]


@dataclass(slots=True)
class InterimPacer:
    """When the next interim decode of one channel may start.

    `interval_s`: least wall-clock time from the end of an interim decode to the start of the
    next. `min_growth_s`: least audio added to the utterance since the previous interim.
    """

    interval_s: float = 1.0
    min_growth_s: float = 0.5
    _last_end: float | None = field(default=None, init=False)
    _last_audio_s: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        if self.interval_s < 0 or self.min_growth_s < 0:
            raise ValueError("interval_s and min_growth_s must not be negative")

    def delay(self, *, now: float, audio_s: float) -> float | None:
        """Seconds until an interim decode of `audio_s` seconds of utterance may start.

        0 means now. None means not until the utterance grows: it has not grown by
        `min_growth_s` since the last interim.
        """
        if audio_s - self._last_audio_s < self.min_growth_s:
            return None
        if self._last_end is None:
            return 0.0
        return max(0.0, self._last_end + self.interval_s - now)

    def decoded(self, *, now: float, audio_s: float) -> None:
        """Record that an interim decode of `audio_s` seconds of utterance ended at `now`."""
        self._last_end = now
        self._last_audio_s = audio_s

    def reset(self) -> None:
        """A final closed the window: the next utterance is measured from zero audio.

        The interval still runs from the last interim, so finals do not reset the rate.
        """
        self._last_audio_s = 0.0
