"""A token bucket: how many of something a peer may do per second on average, and at once.
Pure: the caller gives the time."""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; it starts full."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last: float | None = None

    def take(self, now: float) -> bool:
        """Spend one token at time `now` (seconds, never going back); False if none is left."""
        if self._last is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True
