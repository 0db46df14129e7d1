"""The hub's side of scale-out: the calls streamed here go to its sink (the Redis broker);
calls mirrored from other instances are watched like local ones but never sent back."""

from __future__ import annotations

import json

from twilio_dg_proxy.deepgram_protocol import Kind
from twilio_dg_proxy.hub import CALL_ENDED, Ending, Hub
from twilio_dg_proxy.viewer_protocol import CallInfo


class RecordingSink:
    def __init__(self) -> None:
        self.seen: list[tuple[str, ...]] = []

    def call_opened(self, info: CallInfo) -> None:
        self.seen.append(("opened", info.call_sid))

    def message(self, call_sid: str, text: str, kind: Kind) -> None:
        self.seen.append(("message", call_sid, text))

    def call_ended(self, call_sid: str, ending: Ending) -> None:
        self.seen.append(("ended", call_sid, ending.reason))


def final(text: str) -> str:
    return json.dumps(
        {"type": "Results", "is_final": True, "channel": {"alternatives": [{"transcript": text}]}}
    )


def test_local_calls_go_to_the_sink_in_order_and_remote_ones_do_not() -> None:
    hub = Hub(queue_limit=10)
    sink = RecordingSink()
    hub.sinks.append(sink)
    hub.open_call("CA1")
    hub.open_call("CA2", remote=True)
    hub.publish("CA1", "a")
    hub.publish("CA2", "b")
    hub.end_call("CA2")
    hub.end_call("CA1")
    assert sink.seen == [("opened", "CA1"), ("message", "CA1", "a"), ("ended", "CA1", "call ended")]


def test_remote_calls_are_listed_and_watched_but_not_counted_as_local() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    hub.open_call("CA2", remote=True)
    assert hub.active_calls() == ["CA1", "CA2"]
    assert hub.local_calls() == ["CA1"]
    assert hub.is_remote("CA2") and not hub.is_remote("CA1") and not hub.is_remote("CA3")
    assert hub.counters.calls == 1
    sub = hub.subscribe("CA2")
    assert hub.watcher_count("CA2") == 1
    hub.publish("CA2", "x")
    hub.end_call("CA2", CALL_ENDED)
    assert sub.backlog == 1 and sub.ending == CALL_ENDED


def test_a_replaced_history_is_filtered_and_bounded_as_published_ones_are() -> None:
    hub = Hub(queue_limit=10, history_limit=2)
    hub.open_call("CA1", remote=True)
    interim = json.dumps({"type": "Results", "is_final": False})
    hub.replace_history("CA1", [final("a"), interim, final("b"), final("c")], truncated=False)
    sub = hub.subscribe("CA1", history=True)
    assert sub.backlog == 2
    hub.replace_history("CA1", [final("d")], truncated=True)
    hub.replace_history("CA9", [final("e")], truncated=True)  # not a call: ignored
    viewer = hub.add_viewer(now_ms=0)
    hub.follow(viewer, "CA1")
    assert viewer.backlog == 2  # the call list, then `subscribed`
    assert viewer._items is not None
    viewer._items.popleft()
    snapshot = json.loads(viewer._items.popleft()[0])
    assert snapshot["historyTruncated"] is True
    assert [m["channel"]["alternatives"][0]["transcript"] for m in snapshot["history"]] == ["d"]


class BrokenSink(RecordingSink):
    def message(self, call_sid: str, text: str, kind: Kind) -> None:
        raise RuntimeError("a bug")

    def call_ended(self, call_sid: str, ending: Ending) -> None:
        raise RuntimeError("a bug")


def test_a_sink_that_fails_neither_stops_the_call_nor_the_other_sinks() -> None:
    hub = Hub(queue_limit=10)
    broken, working = BrokenSink(), RecordingSink()
    hub.sinks += [broken, working]
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    hub.publish("CA1", "a")
    hub.end_call("CA1")
    assert sub.backlog == 1 and sub.ending == CALL_ENDED  # the watcher gets all, then its end
    assert working.seen == [
        ("opened", "CA1"),
        ("message", "CA1", "a"),
        ("ended", "CA1", "call ended"),
    ]
