"""Hub and Subscription: fan-out without waiting, bounded queues, eviction, endings."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import CloseCode

from twilio_dg_proxy.exceptions import DuplicateCall, UnknownCall
from twilio_dg_proxy.hub import CALL_ENDED, CLIENT_LEFT, Ending, Hub, Subscription

from .readers import next_message


async def test_every_subscriber_gets_every_message_in_order_then_the_ending() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    subs = [hub.subscribe("CA1") for _ in range(3)]
    for i in range(5):
        hub.publish("CA1", f"m{i}")
    assert hub.end_call("CA1") == 3
    for sub in subs:
        assert [await next_message(sub) for _ in range(6)] == [f"m{i}" for i in range(5)] + [
            CALL_ENDED
        ]


async def test_messages_of_one_call_never_reach_another() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    hub.open_call("CA2")
    one, two = hub.subscribe("CA1"), hub.subscribe("CA2")
    hub.publish("CA1", "for one")
    hub.end_call("CA2")
    assert await next_message(two) == CALL_ENDED
    assert one.backlog == 1


async def test_a_subscriber_too_far_behind_is_evicted_and_others_are_not() -> None:
    hub = Hub(queue_limit=3)
    hub.open_call("CA1")
    slow, fast = hub.subscribe("CA1"), hub.subscribe("CA1")
    for i in range(4):
        hub.publish("CA1", f"m{i}")
        assert await next_message(fast) == f"m{i}"
    assert slow.evicted
    ending = await next_message(slow)
    assert isinstance(ending, Ending) and ending.code == CloseCode.TRY_AGAIN_LATER
    assert not ending.say_close
    assert hub.subscriber_count() == 1
    assert hub.counters.evicted == 1


async def test_get_waits_for_the_next_message() -> None:
    hub = Hub(queue_limit=3)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")

    waiter = asyncio.create_task(next_message(sub))
    await asyncio.sleep(0)
    assert not waiter.done()
    hub.publish("CA1", "hello")
    assert await waiter == "hello"


def test_unknown_call_cannot_be_subscribed() -> None:
    with pytest.raises(UnknownCall, match="CA404"):
        Hub(queue_limit=1).subscribe("CA404")


def test_a_call_cannot_be_opened_twice() -> None:
    hub = Hub(queue_limit=1)
    hub.open_call("CA1")
    with pytest.raises(DuplicateCall):
        hub.open_call("CA1")


async def test_unsubscribed_client_gets_no_more_messages() -> None:
    hub = Hub(queue_limit=3)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    hub.unsubscribe(sub)
    hub.publish("CA1", "late")
    assert await next_message(sub) == CLIENT_LEFT
    assert hub.subscriber_count() == 0


def test_ending_an_unknown_call_or_publishing_to_it_is_harmless() -> None:
    hub = Hub(queue_limit=1)
    hub.publish("CA1", "nobody")
    assert hub.end_call("CA1") == 0
    assert hub.active_calls() == []


async def test_the_first_ending_wins() -> None:
    hub = Hub(queue_limit=1)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    failure = Ending(CloseCode.BAD_GATEWAY, "Deepgram closed")
    hub.end_call("CA1", failure)
    sub.end(CALL_ENDED)
    assert await next_message(sub) == failure


def final(text: str) -> str:
    """A final result with text: what a call's history keeps."""
    transcript = f'{{"alternatives": [{{"transcript": "{text}"}}]}}'
    return f'{{"type": "Results", "is_final": true, "channel": {transcript}}}'


async def taken(sub: Subscription) -> list[str | Ending]:
    """What `sub` delivers up to and including its ending."""
    items: list[str | Ending] = []
    while not items or not isinstance(items[-1], Ending):
        items.append(await next_message(sub))
    return items


async def test_a_subscriber_asking_for_history_gets_the_finals_then_each_live_one_once() -> None:
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    early = [final("one"), '{"type": "Results", "is_final": false}', final("two")]
    for text in early:
        hub.publish("CA1", text)
    with_history, without = hub.subscribe("CA1", history=True), hub.subscribe("CA1")
    hub.publish("CA1", final("three"))
    hub.end_call("CA1")
    assert await taken(with_history) == [final("one"), final("two"), final("three"), CALL_ENDED]
    assert await taken(without) == [final("three"), CALL_ENDED]  # the tutorial: nothing replayed


async def test_the_history_does_not_count_towards_the_queue_limit() -> None:
    hub = Hub(queue_limit=2)
    hub.open_call("CA1")
    for i in range(5):
        hub.publish("CA1", final(f"w{i}"))
    sub = hub.subscribe("CA1", history=True)
    hub.publish("CA1", "live 1")
    assert await next_message(sub) == final("w0")  # taking the history frees no room for live ones
    hub.publish("CA1", "live 2")
    assert not sub.evicted and sub.backlog == 6
    hub.publish("CA1", "live 3")  # a third live message waiting is one too many
    assert sub.evicted and sub.backlog == 0
    ending = await next_message(sub)
    assert isinstance(ending, Ending) and ending.code == CloseCode.TRY_AGAIN_LATER


async def test_an_idle_outbox_writes_at_once_and_queues_behind_a_refusal() -> None:
    """While `direct` is set, a message offered to an empty outbox is written at once (with
    its arrival); one it refuses is queued, and so is everything after it, in order, and
    none of them counts towards eviction until queued."""
    hub = Hub(queue_limit=2)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    written: list[tuple[str, float]] = []
    accept = True

    def direct(text: str, arrived: float) -> bool:
        if accept:
            written.append((text, arrived))
        return accept

    sub.direct = direct
    for i in range(5):
        hub.publish("CA1", f"m{i}")
    accept = False
    hub.publish("CA1", "m5")
    accept = True
    hub.publish("CA1", "m6")
    hub.end_call("CA1")
    assert [text for text, _ in written] == [f"m{i}" for i in range(5)]
    assert all(arrived > 0 for _, arrived in written)
    assert [await next_message(sub) for _ in range(3)] == ["m5", "m6", CALL_ENDED]


async def test_a_client_layer_that_raises_never_reaches_the_publisher(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A watcher's direct write or eviction callback that raises is logged, and the call's
    other watchers still get every message: the publisher is a Deepgram stream's socket
    callback, where an exception would end the call for everyone."""
    hub = Hub(queue_limit=2)
    hub.open_call("CA1")
    broken, slow, healthy = (hub.subscribe("CA1") for _ in range(3))
    got: list[str] = []

    def fails(text: str, arrived: float) -> bool:
        raise RuntimeError("a bug in a client's writer")

    def writes(text: str, arrived: float) -> bool:
        got.append(text)
        return True

    def evicted() -> None:
        raise RuntimeError("TaskGroup is shutting down")

    broken.direct, slow.on_evicted, healthy.direct = fails, evicted, writes
    for i in range(3):
        hub.publish("CA1", f"m{i}")  # slow: evicted at m2
    assert broken.direct is None  # queued for its sender from then on
    assert slow.evicted
    assert got == ["m0", "m1", "m2"]
    assert "writing to a client at once failed" in caplog.text
    assert "closing a client that fell behind failed" in caplog.text


async def test_an_outbox_that_empties_writes_at_once_again_and_counts_its_queue_afresh() -> None:
    """Its queue exists only while something waits in it: once emptied, what is offered is
    written at once again, and a backlog built later is bounded as the first one was."""
    hub = Hub(queue_limit=2)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    written: list[str] = []
    accept = False

    def direct(text: str, arrived: float) -> bool:
        if accept:
            written.append(text)
        return accept

    sub.direct = direct
    hub.publish("CA1", "m0")
    hub.publish("CA1", "m1")  # two behind: at the limit, not over it
    assert [await next_message(sub), await next_message(sub)] == ["m0", "m1"]
    assert sub.backlog == 0 and not sub.evicted
    sub.direct, accept = direct, True  # (get() hands `direct` over only while it waits)
    hub.publish("CA1", "m2")
    accept = False
    for i in (3, 4):
        hub.publish("CA1", f"m{i}")
    assert written == ["m2"] and sub.backlog == 2 and not sub.evicted
    hub.publish("CA1", "m5")  # a third behind
    assert sub.evicted and sub.backlog == 0


async def test_a_wait_writes_at_once_until_it_stops_and_wakes_when_something_is_queued() -> None:
    """`wait(direct)` is `get`'s wait without a coroutine: `direct` takes what is offered
    until `stop_waiting`; its future is done once `take` has something."""
    hub = Hub(queue_limit=10)
    hub.open_call("CA1")
    sub = hub.subscribe("CA1")
    written: list[str] = []

    def direct(text: str, arrived: float) -> bool:
        written.append(text)
        return len(written) < 2  # the second is refused: queued

    assert sub.take() is None
    waiter = sub.wait(direct)
    hub.publish("CA1", "m0")
    assert written == ["m0"] and not waiter.done()
    hub.publish("CA1", "m1")
    assert waiter.done() and sub.take() == "m1" and sub.take() is None
    sub.stop_waiting()
    hub.publish("CA1", "m2")
    hub.end_call("CA1")
    assert written == ["m0", "m1"]
    assert [sub.take(), sub.take(), sub.take()] == ["m2", CALL_ENDED, CALL_ENDED]
