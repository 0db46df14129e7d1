"""What instances say to each other through Redis, and the broker's two policies."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import CloseCode

from twilio_dg_proxy import broker_protocol as wire
from twilio_dg_proxy.hub import CALL_ENDED, Ending
from twilio_dg_proxy.viewer_protocol import CallInfo

INFO = CallInfo("CA1", {"From": "+15550100"}, ("inbound", "outbound"), 1_700_000_000_000)
RECORD = wire.CallRecord(INFO, "host-1-abc")
fields = st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=4)


def test_keys_spread_calls_over_shard_tags_and_give_the_registry_one_tag() -> None:
    keys = wire.Keys("tdp")
    assert keys.call("CA1") == f"tdp:call:{{s{wire.shard_of('CA1')}}}:CA1"
    shards = {wire.shard_of(f"CA{n:032x}") for n in range(1000)}
    assert shards == set(range(wire.SHARDS))
    registry = [keys.calls, keys.feed, keys.epoch, keys.instance("i")]
    assert all(key.startswith("tdp:{registry}:") for key in registry)
    assert len(set(registry)) == 4


def test_entry_ids_number_a_calls_entries_from_one() -> None:
    assert wire.entry_id(1) == "0-1"
    assert wire.entry_number(wire.entry_id(12345)) == 12345
    assert wire.entry_number("1700000000000-0") == 0
    assert wire.entry_number("junk") == 0


@given(st.integers(0, 2**48), st.integers(0, 2**32), st.integers(0, 2**48), st.integers(0, 2**32))
def test_entry_ids_compare_as_numbers(ms: int, seq: int, other_ms: int, other_seq: int) -> None:
    one, other = f"{ms}-{seq}", f"{other_ms}-{other_seq}"
    assert (wire.id_order(one) < wire.id_order(other)) == ((ms, seq) < (other_ms, other_seq))
    assert wire.id_order(str(ms)) == (ms, 0)


@given(st.text())
def test_a_message_entry_carries_its_text_verbatim(text: str) -> None:
    assert wire.parse_call_entry(wire.message_entry(text)) == wire.Message(text)


@given(st.sampled_from(list(CloseCode)), st.text(max_size=50), st.booleans())
def test_an_end_entry_carries_its_ending(code: CloseCode, reason: str, say_close: bool) -> None:
    ending = Ending(code, reason, say_close)
    assert wire.parse_call_entry(wire.end_entry(ending)) == ending
    event = wire.parse_feed_entry(wire.ended_entry("CA1", ending))
    assert event == wire.FeedEvent("ended", "CA1", ending=ending)


@given(fields)
def test_unknown_or_broken_entries_are_skipped_not_fatal(raw: dict[str, str]) -> None:
    entry = wire.parse_call_entry(raw)
    assert entry is None or isinstance(entry, wire.Opened | wire.Message | Ending)
    event = wire.parse_feed_entry(raw)
    assert event is None or isinstance(event, wire.FeedEvent)


def test_an_end_with_an_unknown_code_reads_as_an_internal_error() -> None:
    entry = wire.parse_call_entry({"k": "e", "c": "9999", "r": "?"})
    assert entry == Ending(CloseCode.INTERNAL_ERROR, "?")


def test_a_record_round_trips_and_a_broken_one_is_none() -> None:
    assert wire.load_record(RECORD.dumps()) == RECORD
    event = wire.parse_feed_entry(wire.started_entry(RECORD))
    assert event == wire.FeedEvent("started", "CA1", RECORD)
    for raw in ("", "[]", "{}", json.dumps({"call": {}, "instance": "i"}), "{"):
        assert wire.load_record(raw) is None


def test_replay_reads_messages_and_ending_and_says_whether_the_start_is_missing() -> None:
    whole = [
        ("0-1", wire.open_entry()),
        ("0-2", wire.message_entry("a")),
        ("0-3", wire.message_entry("b")),
        ("0-4", wire.end_entry(CALL_ENDED)),
    ]
    assert wire.replay(whole) == wire.Replay(("a", "b"), False, CALL_ENDED, "0-4")
    trimmed = wire.replay(whole[2:3])
    assert trimmed == wire.Replay(("b",), True, None, "0-3")
    assert wire.replay([]) == wire.Replay((), False, None, "0-0")


def test_the_queue_numbers_each_calls_entries_in_order() -> None:
    queue = wire.PublishQueue(limit=10)
    queue.opened(RECORD)
    assert queue.message("CA1", "a") and queue.message("CA1", "b")
    queue.end("CA1", CALL_ENDED)
    writes = queue.take(10)
    assert [(w.kind, w.number) for w in writes] == [
        ("opened", 1),
        ("message", 2),
        ("message", 3),
        ("end", 4),
    ]
    queue.done(writes)
    assert len(queue) == 0


def test_messages_of_calls_not_opened_here_are_not_queued() -> None:
    queue = wire.PublishQueue(limit=10)
    assert queue.message("CA9", "a")
    queue.end("CA9", CALL_ENDED)
    assert len(queue) == 0


def test_a_full_queue_drops_and_counts_messages_but_keeps_opens_and_ends() -> None:
    queue = wire.PublishQueue(limit=2)
    queue.opened(RECORD)
    assert queue.message("CA1", "a")
    assert not queue.message("CA1", "b")
    assert queue.dropped == 1
    queue.opened(wire.CallRecord(CallInfo("CA2"), "i"))
    queue.end("CA1", CALL_ENDED)
    assert [w.kind for w in queue.take(10)] == ["opened", "message", "opened", "end"]


def test_writes_given_back_go_out_first_in_their_order() -> None:
    queue = wire.PublishQueue(limit=10)
    queue.opened(RECORD)
    for text in "abc":
        queue.message("CA1", text)
    first = queue.take(2)
    assert len(queue) == 4  # taken, not yet made: they still count
    queue.back(first)
    made = queue.take(10)
    assert [w.text for w in made] == ["", "a", "b", "c"]
    queue.done(made)
    assert len(queue) == 0
    queue.again(made[2:])
    assert [w.text for w in queue.take(10)] == ["b", "c"]


def test_after_a_restart_recent_writes_are_made_again_but_opens_of_calls_since_ended() -> None:
    queue = wire.PublishQueue(limit=10)
    queue.opened(RECORD)
    queue.opened(wire.CallRecord(CallInfo("CA2"), "i"))
    queue.message("CA1", "a")
    queue.message("CA2", "b")
    queue.end("CA1", CALL_ENDED)
    again = wire.again_after_restart(iter(queue.take(10)))
    assert [(w.kind, w.call_sid) for w in again] == [
        ("opened", "CA2"),
        ("message", "CA1"),
        ("message", "CA2"),
        ("end", "CA1"),
    ]


@given(st.lists(st.sampled_from(["open", "message", "end", "take", "back"]), max_size=60))
def test_the_queue_never_holds_more_messages_than_its_limit_plus_opens_and_ends(
    steps: list[str],
) -> None:
    queue = wire.PublishQueue(limit=5)
    taken: list[wire.Publish] = []
    calls = 0
    for step in steps:
        if step == "open":
            calls += 1
            queue.opened(wire.CallRecord(CallInfo(f"CA{calls}"), "i"))
        elif step == "message" and calls:
            queue.message(f"CA{calls}", "x")
        elif step == "end" and calls:
            queue.end(f"CA{calls}", CALL_ENDED)
        elif step == "take":
            queue.done(taken)
            taken = queue.take(3)
        elif step == "back":
            queue.back(taken)
            taken = []
        assert len(queue) <= 5 + 2 * calls


def test_an_instance_is_gone_once_its_key_is_missing_for_longer_than_the_grace() -> None:
    liveness = wire.Liveness(grace_s=2.0)
    liveness.check("a", 0.0, alive=True)
    liveness.check("a", 1.0, alive=False)
    assert not liveness.gone("a", 3.0)
    assert liveness.gone("a", 3.5)
    liveness.check("a", 4.0, alive=True)
    assert not liveness.gone("a", 10.0)


def test_heartbeats_come_five_times_per_timeout_and_an_instance_killed_is_judged_by_it() -> None:
    timing = wire.Heartbeats.within(5.0)
    assert (timing.every_s, timing.ttl_ms, timing.grace_s) == (1.0, 2000, 1.0)
    # Killed just after a beat: its key lapses at 2 s, is found missing by the beat after
    # (at most 3 s), and is judged gone a grace later: within the timeout.
    lapses = timing.ttl_ms / 1000
    found_missing = lapses + timing.every_s
    assert found_missing + timing.grace_s <= 5.0


def test_forgiving_starts_the_count_again() -> None:
    liveness = wire.Liveness(grace_s=2.0)
    liveness.check("a", 0.0, alive=False)
    liveness.forgive()  # e.g. Redis restarted: every heartbeat key was lost at once
    liveness.check("a", 2.5, alive=False)
    assert not liveness.gone("a", 4.0)
    assert liveness.gone("a", 5.0)
    liveness.forget("a")
    assert not liveness.gone("a", 100.0)
