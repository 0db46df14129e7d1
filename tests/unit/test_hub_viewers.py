"""Hub and ViewerFeed: the call list, history replay exactly once, routing, eviction (the
texts themselves: test_viewer_protocol)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.frames import CloseCode

from twilio_dg_proxy import json_loads
from twilio_dg_proxy.deepgram_server_protocol import results_message
from twilio_dg_proxy.exceptions import TooManySubscribers, UnknownCall
from twilio_dg_proxy.hub import Ending, History, Hub, ViewerFeed, is_history
from twilio_dg_proxy.viewer_protocol import CallInfo


def result(text: str, *, start: float, is_final: bool = True, speech_final: bool = False) -> str:
    message = results_message(
        transcript=text,
        channel=0,
        channels=2,
        start=start,
        duration=1.0,
        is_final=is_final,
        speech_final=speech_final,
        from_finalize=False,
        request_id="r",
    )
    return json.dumps(message, separators=(",", ":"))


def taken(viewer: ViewerFeed) -> list[Any]:
    """Everything queued for `viewer`, decoded (an Ending as itself)."""
    out: list[Any] = []
    while viewer.backlog:
        assert viewer._items is not None
        item, _ = viewer._items.popleft()
        out.append(json.loads(item))
    if viewer.ending is not None:
        out.append(viewer.ending)
    return out


INFO = CallInfo("CA1", {"From": "+15550100"}, ("inbound", "outbound"), 1_700_000_000_000)
CALL_JSON = {
    "callSid": "CA1",
    "customParameters": {"From": "+15550100"},
    "tracks": ["inbound", "outbound"],
    "startedAt": 1_700_000_000_000,
}


def test_a_viewer_gets_the_call_list_then_calls_as_they_start_and_end() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA0")
    viewer = hub.add_viewer(now_ms=5)
    hub.open_call("CA1", INFO)
    hub.end_call("CA0", Ending(CloseCode.BAD_GATEWAY, "Deepgram refused"))
    assert taken(viewer) == [
        {
            "type": "calls",
            "now": 5,
            "calls": [{"callSid": "CA0", "customParameters": {}, "tracks": [], "startedAt": 0}],
        },
        {"type": "call_started", "call": CALL_JSON},
        {"type": "call_ended", "callSid": "CA0", "code": 1014, "reason": "Deepgram refused"},
    ]
    assert hub.viewer_count() == 1
    hub.remove_viewer(viewer)
    assert hub.viewer_count() == 0


def test_a_late_viewer_gets_the_finals_so_far_then_live_messages_each_once() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1", INFO)
    early = [
        result("hel", start=0, is_final=False),
        result("hello", start=0),
        result("", start=1, speech_final=True),
        result("", start=2),
    ]
    for text in early:
        hub.publish("CA1", text)
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    late = result("again", start=3)
    hub.publish("CA1", late)
    assert hub.end_call("CA1") == 1
    items = taken(viewer)[1:]
    assert items[0] == {
        "type": "subscribed",
        "callSid": "CA1",
        "call": CALL_JSON,
        "historyTruncated": False,
        "history": [json.loads(early[1]), json.loads(early[2])],  # no interim, no empty final
    }
    assert items[1] == {"type": "deepgram", "callSid": "CA1", "message": json.loads(late)}
    assert items[2]["type"] == "call_ended"
    assert len(items) == 3  # a viewer outlives the calls it watches


FINALS = [result(f"w{i}", start=i) for i in range(6)]
SIZE = len(FINALS[0])  # all the same size


@pytest.mark.parametrize(
    ("limits", "kept"),
    [({"history_limit": 2}, 2), ({"history_bytes": 3 * SIZE + SIZE // 2}, 3)],
    ids=["by count", "by bytes"],
)
def test_history_keeps_the_latest_finals_and_says_when_it_dropped_some(
    limits: dict[str, int], kept: int
) -> None:
    hub = Hub(queue_limit=10, **limits)
    hub.open_call("CA1")
    for text in FINALS:
        hub.publish("CA1", text)
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    snapshot = taken(viewer)[1]
    assert snapshot["historyTruncated"] is True
    assert snapshot["history"] == [json.loads(text) for text in FINALS[-kept:]]


@pytest.mark.parametrize("limits", [{"history_limit": 0}, {"history_bytes": 0}])
def test_history_can_be_turned_off(limits: dict[str, int]) -> None:
    hub = Hub(queue_limit=10, **limits)
    hub.open_call("CA1")
    hub.publish("CA1", result("hello", start=0))
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    assert taken(viewer)[1]["history"] == []


@given(
    st.lists(st.integers(1, 300), max_size=40),
    st.integers(0, 12),
    st.integers(0, 2000),
)
def test_history_holds_the_longest_suffix_within_both_limits(
    sizes: list[int], max_messages: int, max_bytes: int
) -> None:
    history = History(max_messages, max_bytes)
    texts = ["x" * n for n in sizes]
    for text in texts:
        history.add(text)
    kept = list(history.messages)
    assert kept == texts[len(texts) - len(kept) :]  # the latest ones, in order
    assert len(kept) <= max_messages and sum(map(len, kept)) <= max_bytes
    assert history.size == sum(map(len, kept))
    assert history.truncated == (len(kept) < len(texts))
    if len(kept) < len(texts):  # one more would break a limit
        longer = texts[len(texts) - len(kept) - 1 :]
        assert len(longer) > max_messages or sum(map(len, longer)) > max_bytes


def test_following_again_resends_the_history_without_doubling_the_live_feed() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    hub.publish("CA1", result("one", start=0))
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    hub.follow(viewer, "CA1")
    hub.publish("CA1", result("two", start=1))
    kinds = [item["type"] for item in taken(viewer)]
    assert kinds == ["calls", "subscribed", "subscribed", "deepgram"]
    assert hub.subscriber_count() == 1
    assert hub.counters.subscriptions == 1


def test_unfollowing_stops_the_call_messages_after_an_acknowledgement() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    hub.publish("CA1", result("one", start=0))
    hub.unfollow(viewer, "CA1")
    hub.publish("CA1", result("two", start=1))
    kinds = [item["type"] for item in taken(viewer)]
    assert kinds == ["calls", "subscribed", "deepgram", "unsubscribed"]
    assert hub.subscriber_count() == 0


def test_following_an_unknown_call_or_a_full_one_raises() -> None:
    hub = Hub(queue_limit=10, max_per_call=1)
    viewer = hub.add_viewer(now_ms=0)
    with pytest.raises(UnknownCall):
        hub.follow(viewer, "CA1")
    hub.open_call("CA1")
    hub.subscribe("CA1")  # a /client subscriber counts towards the limit too
    with pytest.raises(TooManySubscribers):
        hub.follow(viewer, "CA1")


def test_a_viewer_too_far_behind_is_evicted_and_forgotten() -> None:
    hub = Hub(queue_limit=3)
    hub.open_call("CA1")
    slow, fast = hub.add_viewer(now_ms=0), hub.add_viewer(now_ms=0)
    hub.follow(slow, "CA1")
    hub.follow(fast, "CA1")
    taken(fast)
    for i in range(2):
        hub.publish("CA1", result(f"w{i}", start=i))
    assert slow.evicted and not fast.evicted
    assert slow.ending is not None and slow.ending.code == CloseCode.TRY_AGAIN_LATER
    assert hub.counters.evicted == 1
    assert (hub.viewer_count(), hub.subscriber_count()) == (1, 1)
    hub.open_call("CA2")  # nothing more is queued for the evicted viewer
    assert slow.backlog == 0


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        (result("hello", start=0), True),
        (result("", start=0, speech_final=True), True),
        (result("", start=0), False),
        (result("hello", start=0, is_final=False), False),
        ('{"type": "UtteranceEnd", "channel": [0, 2], "last_word_end": 2.1}', True),
        ('{"type": "Metadata", "is_final": true}', False),
        ('{"type": "Results", "is_final": true}', False),
        ('["is_final": true]', False),
        ("plain text", False),
    ],
)
def test_only_final_results_with_something_to_say_are_history(text: str, kept: bool) -> None:
    assert is_history(text) is kept


@pytest.mark.parametrize("loads", [json_loads.loads, json_loads.std_loads])
def test_nesting_deeper_than_the_parser_goes_is_not_history(
    loads: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(json_loads, "loads", loads)
    assert not is_history('{"is_final": true, "x": ' + "[" * 100_000 + "]" * 100_000 + "}")
