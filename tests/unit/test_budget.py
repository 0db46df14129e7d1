"""The token bucket: a burst at once, then the rate."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.budget import TokenBucket


def test_a_full_bucket_allows_its_burst_at_once_then_nothing() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]


def test_tokens_come_back_at_the_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    for _ in range(5):
        bucket.take(0.0)
    assert bucket.take(0.1) and not bucket.take(0.1)  # one per 0.1 s
    assert sum(bucket.take(100.0) for _ in range(10)) == 5  # never more than the burst


@given(st.lists(st.floats(min_value=0, max_value=1000, allow_nan=False), max_size=200))
def test_never_more_than_burst_plus_rate_times_elapsed(steps: list[float]) -> None:
    bucket = TokenBucket(rate=3, burst=7)
    times = sorted(steps)
    taken = sum(bucket.take(t) for t in times)
    elapsed = times[-1] - times[0] if times else 0.0
    assert taken <= 7 + 3 * elapsed + 1e-9
