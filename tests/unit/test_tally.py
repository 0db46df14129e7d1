"""`Tally` adds to a Histogram exactly what observing each value would have: the same
buckets, count and sum in the library's own exposition; and the private attributes it relies
on are named here, so a prometheus_client release that changes them fails clearly."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from twilio_dg_proxy.tally import Tally, batches_supported

BUCKETS = (0.001, 0.01, 0.1, 0.25, 1.0)


def histogram() -> tuple[Histogram, CollectorRegistry]:
    registry = CollectorRegistry()
    return Histogram("h_seconds", "h", buckets=BUCKETS, registry=registry), registry


def exposition(registry: CollectorRegistry) -> list[str]:
    """The exposition without the `_created` line (a timestamp)."""
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def test_prometheus_client_has_the_internals_tally_adds_to() -> None:
    observed, _ = histogram()
    assert batches_supported(observed), (
        "prometheus_client's Histogram no longer has _buckets (a value per bucket, not "
        "cumulative), _upper_bounds and _sum: Tally falls back to observe() per value"
    )


values = st.lists(
    st.floats(min_value=0.0, max_value=10.0, allow_nan=False) | st.sampled_from(BUCKETS),
    max_size=50,
)


@given(values, st.integers(min_value=0, max_value=50))
def test_a_tally_flushed_equals_observing_each_value(
    observations: list[float], flush_at: int
) -> None:
    observed, by_observe = histogram()
    tallied, by_tally = histogram()
    tally = Tally(tallied)
    for i, value in enumerate(observations):
        observed.observe(value)
        tally.observe(value)
        if i == flush_at:
            tally.flush()
    tally.flush()
    expected = exposition(by_observe)
    got = exposition(by_tally)
    # Sums may differ in the last bit (added in another order).
    assert [line for line in got if "_sum" not in line] == [
        line for line in expected if "_sum" not in line
    ]
    (sum_expected,) = [float(line.split()[-1]) for line in expected if "_sum" in line]
    (sum_got,) = [float(line.split()[-1]) for line in got if "_sum" in line]
    assert math.isclose(sum_got, sum_expected, abs_tol=1e-9)


def test_nothing_is_added_before_a_flush() -> None:
    tallied, registry = histogram()
    tally = Tally(tallied)
    tally.observe(0.05)
    assert "h_seconds_count 0.0" in exposition(registry)
    tally.flush()
    assert "h_seconds_count 1.0" in exposition(registry)
