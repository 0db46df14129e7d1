"""Hub: clients waiting for the next call that matches, and listeners of calls opening."""

from __future__ import annotations

from twilio_dg_proxy.exceptions import TooManySubscribers
from twilio_dg_proxy.hub import CALL_ENDED, Hub, Subscription
from twilio_dg_proxy.viewer_protocol import CallInfo

from .readers import next_message

FINAL = '{"type": "Results", "is_final": true, "speech_final": true, "channel": {}}'


def info(sid: str, number: str) -> CallInfo:
    return CallInfo(sid, {"From": number}, ("inbound",), 0)


async def test_a_waiter_is_subscribed_as_the_call_opens_and_gets_its_first_message() -> None:
    hub = Hub(queue_limit=10)
    waiter = hub.wait_for_call(lambda call: call.custom_parameters.get("From") == "+1")
    hub.open_call("CAother", info("CAother", "+2"))
    assert not waiter.found.is_set()
    hub.open_call("CA1", info("CA1", "+1"))
    hub.publish("CA1", "first")
    hub.end_call("CA1")
    assert waiter.found.is_set()
    sub = waiter.result
    assert isinstance(sub, Subscription) and sub.call_sid == "CA1" and not sub.catch_up
    assert [await next_message(sub), await next_message(sub)] == ["first", CALL_ENDED]


async def test_a_waiter_gets_one_call_only() -> None:
    hub = Hub(queue_limit=10)
    waiter = hub.wait_for_call(lambda call: True)
    hub.open_call("CA1")
    hub.open_call("CA2")
    assert isinstance(waiter.result, Subscription) and waiter.result.call_sid == "CA1"
    assert hub.watcher_count("CA2") == 0


async def test_a_waiter_that_stopped_waiting_is_not_subscribed() -> None:
    hub = Hub(queue_limit=10)
    waiter = hub.wait_for_call(lambda call: True)
    hub.stop_waiting(waiter)
    hub.stop_waiting(waiter)  # twice is harmless
    hub.open_call("CA1")
    assert waiter.result is None and hub.watcher_count("CA1") == 0


async def test_waiters_beyond_the_calls_limit_are_told_it_is_full() -> None:
    hub = Hub(queue_limit=10, max_per_call=1)
    first, second = hub.wait_for_call(lambda c: True), hub.wait_for_call(lambda c: True)
    hub.open_call("CA1")
    assert isinstance(first.result, Subscription)
    assert isinstance(second.result, TooManySubscribers) and second.found.is_set()


async def test_a_waiter_on_a_remote_call_catches_up_with_the_loaded_stream_first() -> None:
    hub = Hub(queue_limit=2)
    waiter = hub.wait_for_call(lambda call: True)
    hub.open_call("CA1", remote=True)
    sub = waiter.result
    assert isinstance(sub, Subscription) and sub.catch_up
    hub.publish("CA1", "live")  # followed from after what was loaded
    # What the call sent before it was followed here: more than the queue's limit, a replay.
    hub.replace_history("CA1", ["interim", FINAL, "interim 2"], truncated=False)
    assert not sub.catch_up and not sub.evicted
    assert [await next_message(sub) for _ in range(4)] == ["interim", FINAL, "interim 2", "live"]
    assert list(hub._calls["CA1"].history.messages) == [FINAL]


async def test_a_subscriber_that_did_not_wait_is_not_replayed_to() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1", remote=True)
    sub = hub.subscribe("CA1")
    hub.replace_history("CA1", ["old"], truncated=False)
    hub.publish("CA1", "live")
    assert await next_message(sub) == "live"


def test_listeners_hear_of_each_call_opening_until_removed() -> None:
    hub = Hub(queue_limit=10)
    heard: list[tuple[str, bool]] = []

    def listener(call: CallInfo, remote: bool) -> None:
        heard.append((call.call_sid, remote))

    hub.add_listener(listener)
    hub.open_call("CA1")
    hub.open_call("CA2", remote=True)
    hub.remove_listener(listener)
    hub.remove_listener(listener)  # twice is harmless
    hub.open_call("CA3")
    assert heard == [("CA1", False), ("CA2", True)]


def test_call_infos_lists_the_active_calls_in_the_order_learnt() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1", info("CA1", "+1"))
    hub.open_call("CA2", info("CA2", "+2"), remote=True)
    assert [i.call_sid for i in hub.call_infos()] == ["CA1", "CA2"]
