"""Retry delays (pure): the one exponential backoff every retry loop uses (Deepgram streams,
Redis, the transcript store, webhook deliveries, restarted workers), each with its own
figures.

Attempt n (from 1) may wait up to `first_s * 2**(n - 1)`, at most `longest_s`. Jitter keeps
the instances that lost the same service from retrying in step: "equal" waits between half
that ceiling and all of it (never zero: a loop that keeps failing still pauses), "full"
anywhere from zero to it (AWS's recommendation for many clients of one service), "none" the
ceiling itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Jitter = Literal["equal", "full", "none"]
_MAX_EXPONENT = 62  # 2**62 times any first_s is past any ceiling: never an OverflowError


@dataclass(frozen=True, slots=True)
class Backoff:
    """Exponential delays from `first_s`, doubling up to `longest_s`, with `jitter`."""

    first_s: float
    longest_s: float
    jitter: Jitter = "equal"

    def ceiling(self, attempt: int) -> float:
        """The longest wait before attempt `attempt` (1-based; below 1 counts as 1)."""
        exponent = min(max(attempt - 1, 0), _MAX_EXPONENT)
        return min(self.longest_s, self.first_s * 2.0**exponent)

    def delay(self, attempt: int, fraction: float = 1.0) -> float:
        """Seconds to wait before attempt `attempt`, `fraction` (uniform in [0, 1]; clamped)
        choosing where within the jitter's range."""
        ceiling = self.ceiling(attempt)
        fraction = min(max(fraction, 0.0), 1.0)
        if self.jitter == "full":
            return ceiling * fraction
        if self.jitter == "equal":
            return ceiling * (0.5 + fraction / 2)
        return ceiling
