"""How the store's writer waits: the bounded queue of events and the backoff."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.store.policy import PendingEvents, Waiting

Entry = Waiting[str, int]

# A run of the writer: a call starts, has a final, ends; the writer takes a batch.
steps = st.lists(
    st.tuples(st.sampled_from(["start", "final", "end", "take"]), st.integers(0, 4)),
    max_size=200,
)


@given(max_bytes=st.integers(1, 40), run=steps)
def test_the_queue_keeps_order_and_its_bound_and_accounts_for_every_event(
    max_bytes: int, run: list[tuple[str, int]]
) -> None:
    pending: PendingEvents[str, int] = PendingEvents(max_bytes)
    added: list[Entry] = []
    taken: list[Entry] = []
    dropped: list[Entry] = []
    live: dict[int, int] = {}  # call -> its key (a new one each start)
    started = ended = 0
    for step, n in run:
        if step == "take":
            batch = pending.take(max_events=n + 1, max_bytes=5)
            assert batch == [e for e in added if e not in taken and e not in dropped][: len(batch)]
            taken += batch
            continue
        if step == "start":
            live[n] = started = started + 1
        elif n not in live or any(e.call == live[n] and e.kind == "start" for e in dropped):
            continue  # the writer queues nothing more of a call lost whole
        size = 1 + n  # events of several sizes
        entry: Entry = Waiting(f"{step} {n}", live[n], step, size)  # type: ignore[arg-type]
        if step == "end":
            del live[n]
            ended += 1
        added.append(entry)
        gone = pending.add(entry)
        assert all(e not in taken for e in gone)  # what the writer holds is never dropped
        dropped += gone
        waiting = list(pending)
        assert pending.bytes == sum(e.size for e in waiting)
        # What dropped events still hold is bounded too: all in all, 1.25 times the bound.
        assert pending.dropped_bytes_held <= max_bytes // 4
        if pending.bytes > max_bytes:  # only ends of calls whose start was taken are left
            assert all(e.kind == "end" for e in waiting)
            assert all(any(t.call == e.call and t.kind == "start" for t in taken) for e in waiting)
    waiting = list(pending)
    assert len(pending) == len(waiting)
    assert sorted(map(id, taken + waiting + dropped)) == sorted(map(id, added))  # each once
    assert [e for e in added if e in waiting] == waiting  # oldest first


def test_beyond_the_bound_the_oldest_waiting_finals_go_first() -> None:
    pending: PendingEvents[str, int] = PendingEvents(10)
    start: Entry = Waiting("start", 1, "start", 2)
    finals: list[Entry] = [Waiting(f"final {i}", 1, "final", 3) for i in range(4)]
    assert pending.add(start) == []
    assert pending.add(finals[0]) == [] and pending.add(finals[1]) == []
    assert pending.take(1, 100) == [start]
    assert pending.add(finals[2]) == [] and pending.add(finals[3]) == [finals[0]]
    assert list(pending) == finals[1:] and pending.bytes == 9


def test_with_only_starts_and_ends_left_the_oldest_unstarted_call_goes_whole() -> None:
    pending: PendingEvents[str, int] = PendingEvents(10)
    written: list[Entry] = [Waiting("start 1", 1, "start", 3), Waiting("start 4", 4, "start", 3)]
    for entry in written:
        pending.add(entry)
    assert pending.take(10, 100) == written
    second: list[Entry] = [Waiting("start 2", 2, "start", 3), Waiting("final 2", 2, "final", 2)]
    for entry in second:
        pending.add(entry)
    end_1: Entry = Waiting("end 1", 1, "end", 3)
    assert pending.add(end_1) == []
    third: Entry = Waiting("start 3", 3, "start", 3)
    assert pending.add(third) == [second[1]]  # a final first
    end_3: Entry = Waiting("end 3", 3, "end", 3)
    assert pending.add(end_3) == [second[0]]  # then call 2, whose start waits
    assert list(pending) == [end_1, third, end_3]
    end_4: Entry = Waiting("end 4", 4, "end", 9)  # over the bound: call 3 goes, the ends stay
    assert pending.add(end_4) == [third, end_3]
    assert list(pending) == [end_1, end_4] and pending.bytes == 12


def test_a_long_outage_leaves_no_husks_behind() -> None:
    pending: PendingEvents[str, int] = PendingEvents(100)
    for i in range(100_000):
        pending.add(Waiting(f"final {i}", 1, "final", 10))
    assert len(pending) == 10
    assert len(pending._events) <= 2 * 1024  # the dropped are compacted away
    assert [e.event for e in pending.take(100, 1000)] == [
        f"final {i}" for i in range(99_990, 100_000)
    ]


def test_a_queue_without_room_is_refused() -> None:
    with pytest.raises(ValueError):
        PendingEvents(0)
