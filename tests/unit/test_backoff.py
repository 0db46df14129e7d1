"""The one backoff policy: ceilings, each jitter's range, and the figures each caller uses."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.backoff import Backoff, Jitter
from twilio_dg_proxy.deepgram_protocol import Backoff as DeepgramBackoff
from twilio_dg_proxy.workers import RestartBackoff


@given(
    attempt=st.integers(-5, 10_000),
    fraction=st.floats(-1.0, 2.0),
    first=st.floats(0.001, 5.0),
    longest=st.floats(5.0, 120.0),
    jitter=st.sampled_from(["equal", "full", "none"]),
)
def test_a_delay_is_within_its_jitters_range_under_the_capped_exponential(
    attempt: int, fraction: float, first: float, longest: float, jitter: Jitter
) -> None:
    backoff = Backoff(first, longest, jitter)
    ceiling = min(longest, first * 2.0 ** min(max(attempt - 1, 0), 62))
    assert backoff.ceiling(attempt) == ceiling
    low = {"equal": ceiling / 2, "full": 0.0, "none": ceiling}[jitter]
    assert low <= backoff.delay(attempt, fraction) <= ceiling


def test_ceilings_double_then_hold() -> None:
    backoff = Backoff(0.5, 4.0, "none")
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert Backoff(0.5, 4.0).delay(1, 0.0) == 0.25  # equal jitter: half at least
    assert Backoff(0.5, 4.0, "full").delay(3, 0.5) == pytest.approx(1.0)


def test_each_caller_keeps_its_figures() -> None:
    deepgram = DeepgramBackoff(max_attempts=5, budget_s=30)
    assert [deepgram.delay(n, 1.0) for n in (1, 2, 5, 9)] == [0.25, 0.5, 4.0, 4.0]
    restarts = RestartBackoff()
    assert [restarts.delay(1.0) for _ in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert restarts.delay(31.0) == 0.5  # ran long enough: back to the first delay
