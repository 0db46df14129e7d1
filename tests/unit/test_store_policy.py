"""How the store's writer waits: the bounded queue of calls and the backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.store.policy import Backoff, PendingCalls

# A run of the writer: add a call, start saving the oldest, or finish saving it.
steps = st.lists(st.sampled_from(["add", "begin", "done"]), max_size=200)


@given(limit=st.integers(1, 10), run=steps)
def test_the_queue_keeps_order_and_its_bound_and_never_drops_the_call_in_flight(
    limit: int, run: list[str]
) -> None:
    pending: PendingCalls[int] = PendingCalls(limit)
    added = saved = 0
    dropped: list[int] = []
    in_flight: int | None = None
    for step in run:
        if step == "add":
            lost = pending.add(added)
            added += 1
            if lost is not None:
                assert lost != in_flight
                dropped.append(lost)
        elif step == "begin" and len(pending):
            in_flight = pending.begin()
            assert in_flight == list(pending)[0]
        elif step == "done" and in_flight is not None:
            pending.done()
            in_flight = None
            saved += 1
        assert len(pending) <= limit
        kept = list(pending)
        assert kept == sorted(kept)  # oldest first
        assert saved + len(kept) + len(dropped) == added  # each call saved, waiting or lost


def test_beyond_the_bound_the_oldest_waiting_call_is_dropped() -> None:
    pending: PendingCalls[str] = PendingCalls(3)
    for call in "abc":
        assert pending.add(call) is None
    assert pending.add("d") == "a"
    assert pending.begin() == "b"
    assert pending.add("e") == "c"  # not "b": its save may already have succeeded
    assert list(pending) == ["b", "d", "e"]


def test_with_room_for_one_call_in_flight_a_new_one_is_dropped() -> None:
    pending: PendingCalls[str] = PendingCalls(1)
    pending.add("a")
    pending.begin()
    assert pending.add("b") == "b"
    pending.done()
    assert pending.add("c") is None and list(pending) == ["c"]


def test_a_queue_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        PendingCalls(0)


@given(
    attempt=st.integers(-5, 10_000),
    jitter=st.floats(-1.0, 2.0),
    first=st.floats(0.001, 5.0),
    cap=st.floats(5.0, 120.0),
)
def test_a_backoff_wait_is_within_half_and_all_of_its_capped_exponential(
    attempt: int, jitter: float, first: float, cap: float
) -> None:
    backoff = Backoff(first, cap)
    delay = backoff.delay(attempt, jitter)
    envelope = min(cap, first * 2.0 ** min(max(attempt, 0), 64))
    assert envelope / 2 <= delay <= envelope


def test_backoff_doubles_then_holds_at_its_cap() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.delay(n, 1.0) for n in range(6)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(0, 0.0) == 0.25
