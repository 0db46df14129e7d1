"""Watching by phone number over real sockets: /client clients that send a number instead of a
callSid, viewers that `follow` a number, and both across two instances sharing a real Redis.
A callSid client alongside must get the tutorial's protocol, byte for byte."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import is_history
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..redis_server import RedisServer
from ..timing import S
from .helpers import RunningProxy, TwilioPeer, Watcher, running_proxy, until
from .test_scale_out import instances, visible

NUMBER = "+15550100"
OTHER = "+15550199"


def audio(seconds: float) -> dict[Track, bytes]:
    n = int(seconds * 8000)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


def call_with(**parameters: str) -> SimulatedCall:
    return SimulatedCall(custom_parameters=parameters)


async def play(twilio: TwilioPeer, seconds: float = 1.0) -> None:
    await twilio.send_all(twilio.call.frames(audio(seconds)))
    await twilio.stop()


async def waiting(proxy: RunningProxy, number: str, query: str = "") -> Watcher:
    """A /client client that chose `number` while no call has it: returns once the hub
    holds its wait."""
    hub = proxy.server.hub
    before = len(hub._waiters)
    ws = await connect(proxy.client_url + query, proxy=None)
    listed = json.loads(await ws.recv())
    await ws.send(number + "\n")
    await until(lambda: len(hub._waiters) > before or ws.close_code is not None)
    return Watcher(ws, listed)


def sent_on(deepgram: FakeDeepgram, index: int = 0) -> list[str]:
    """What the fake Deepgram said on its `index`th stream (in the order they opened)."""
    return list(deepgram.streams[index].sent)


async def test_a_client_waiting_for_a_number_gets_the_whole_call_then_close_and_a_call_sid_client_is_unaffected(  # noqa: E501
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    by_number = await waiting(proxy, "+1 555-0100")
    assert by_number.listed == []
    call = call_with(From=NUMBER, To=OTHER)
    async with TwilioPeer.started(proxy, call) as twilio:
        by_sid = await Watcher.join(proxy, call.call_sid)  # the tutorial's client, alongside
        await play(twilio)
        got_by_number, got_by_sid = await asyncio.gather(
            by_number.transcript(), by_sid.transcript()
        )
    assert got_by_number == sent_on(deepgram)  # from its very first result
    assert got_by_sid == got_by_number
    assert not proxy.server.hub._waiters


@pytest.mark.parametrize(
    "typed", ["+15550100", "+1 555-0100", "(555) 0100", "555.0100", " 1 (555) 010-0 "]
)
async def test_formatting_variants_of_the_number_match(
    proxy: RunningProxy, deepgram: FakeDeepgram, typed: str
) -> None:
    by_number = await waiting(proxy, typed)
    async with TwilioPeer.started(proxy, call_with(From=OTHER, To=NUMBER)) as twilio:
        await play(twilio, 0.5)
        assert await by_number.transcript() == sent_on(deepgram)


async def test_with_several_active_calls_the_newest_is_chosen(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    older, newer, other = call_with(From=NUMBER), call_with(To=NUMBER), call_with(From=OTHER)
    async with (
        TwilioPeer.started(proxy, older) as first,
        TwilioPeer.started(proxy, newer) as second,
        TwilioPeer.started(proxy, other) as third,
    ):
        client = await Watcher.join(proxy, "555-0100")
        assert client.listed == [older.call_sid, newer.call_sid, other.call_sid]
        await asyncio.gather(play(first), play(second), play(third))
        got = await client.transcript()
    (stream,) = [s for s in deepgram.streams if s.sent == got]  # exactly one call's messages
    assert deepgram.streams.index(stream) == 1


async def test_one_call_per_subscription_and_the_next_connection_gets_the_next_call(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    client = await waiting(proxy, NUMBER)
    async with TwilioPeer.started(proxy, call_with(From=NUMBER)) as twilio:
        await play(twilio, 0.5)
        assert await client.transcript() == sent_on(deepgram, 0)
    again = await waiting(proxy, NUMBER)  # as `watch` does after each `close`
    async with TwilioPeer.started(proxy, call_with(To=NUMBER)) as twilio:
        await play(twilio, 0.5)
        assert await again.transcript() == sent_on(deepgram, 1)


async def test_a_number_that_never_calls_closes_normally_after_the_wait_with_its_reason(
    deepgram: FakeDeepgram,
) -> None:
    async with running_proxy(deepgram.url, NUMBER_WAIT_S="0.3") as proxy:
        async with TwilioPeer.started(proxy, call_with(From=OTHER)):
            client = await waiting(proxy, NUMBER)
            code, reason, messages = await client.closed()
    assert (code, reason) == (1000, "no call from or to that number within 0.3 s")
    assert messages == ["error: no call from or to that number within 0.3 s"]
    assert not proxy.server.hub._waiters


async def test_a_client_that_leaves_while_waiting_is_forgotten(proxy: RunningProxy) -> None:
    client = await waiting(proxy, NUMBER)
    await client.ws.close()
    await until(lambda: not proxy.server.hub._waiters)
    async with TwilioPeer.started(proxy, call_with(From=NUMBER)):
        assert proxy.server.hub.subscriber_count() == 0


async def test_a_choice_that_is_neither_a_call_sid_nor_a_number_is_refused_as_before(
    proxy: RunningProxy,
) -> None:
    client = await Watcher.join(proxy, "CAnope")
    code, reason, messages = await client.closed()
    assert code == 1008 and "unknown callSid 'CAnope'" in reason
    assert messages[0].startswith("error: unknown callSid 'CAnope'")


async def test_numbers_stay_out_of_logs_above_debug(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="twilio_dg_proxy")
    waiter = await waiting(proxy, "+1 555 0100")
    async with TwilioPeer.started(proxy, call_with(From=NUMBER, To=OTHER)) as twilio:
        chooser = await Watcher.join(proxy, "555-0100")
        async with connect(f"ws://127.0.0.1:{proxy.port}/viewer/ws", proxy=None) as viewer:
            await viewer.recv()
            await viewer.send(json.dumps({"type": "follow", "number": "+1 (555) 0199"}))
            await until_type(viewer, "subscribed")
            await play(twilio, 0.5)
            await asyncio.gather(waiter.transcript(), chooser.transcript())
    digits = ("5550100", "555 0100", "555-0100", "5550199", "(555) 0199")
    loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("waits up to" in line for line in loud)
    assert any("follows a number" in line for line in loud)
    assert not [line for line in loud if any(d in line for d in digits)]
    quiet = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any("+15550100" in line for line in quiet)  # still there to debug with


# The viewer's `follow`.


async def until_type(viewer: ClientConnection, kind: str) -> dict[str, Any]:
    """Read the viewer's messages until one of type `kind`; return it."""
    async with asyncio.timeout(10 * S):
        while True:
            message: dict[str, Any] = json.loads(await viewer.recv())
            if message["type"] == kind:
                return message


async def types_until(viewer: ClientConnection, kind: str) -> list[str]:
    """The types of the viewer's messages up to and including the first of type `kind`."""
    kinds: list[str] = []
    async with asyncio.timeout(10 * S):
        while not kinds or kinds[-1] != kind:
            kinds.append(json.loads(await viewer.recv())["type"])
    return kinds


async def viewer_call(viewer: ClientConnection) -> tuple[str, list[dict[str, Any]]]:
    """The next call the viewer is subscribed to: its callSid and the Deepgram messages it
    got (history, then live) until its `call_ended`."""
    subscribed = await until_type(viewer, "subscribed")
    call_sid = subscribed["callSid"]
    messages = list(subscribed["history"])
    async with asyncio.timeout(10 * S):
        while True:
            message = json.loads(await viewer.recv())
            if message["type"] == "deepgram" and message["callSid"] == call_sid:
                messages.append(message["message"])
            elif message["type"] == "call_ended" and message["callSid"] == call_sid:
                return call_sid, messages


async def test_a_viewer_following_a_number_is_subscribed_to_each_call_with_it_as_it_starts(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    async with connect(f"ws://127.0.0.1:{proxy.port}/viewer/ws", proxy=None) as viewer:
        await until_type(viewer, "calls")
        await viewer.send(json.dumps({"type": "follow", "number": "(555) 0100"}))
        assert await until_type(viewer, "followed") == {"type": "followed", "number": "5550100"}
        for index, call in enumerate([call_with(From=NUMBER), call_with(To=NUMBER)]):
            async with TwilioPeer.started(proxy, call) as twilio:
                await play(twilio, 0.5)
                call_sid, messages = await viewer_call(viewer)
            assert call_sid == call.call_sid
            assert messages == [json.loads(m) for m in sent_on(deepgram, index)]
        # Another spelling of the same number unfollows it.
        await viewer.send(json.dumps({"type": "unfollow", "number": "+1 555 0100"}))
        assert (await until_type(viewer, "unfollowed"))["number"] == "+15550100"
        async with TwilioPeer.started(proxy, call_with(From=NUMBER)) as twilio:
            await play(twilio, 0.2)
            kinds = await types_until(viewer, "call_ended")
        assert kinds == ["call_started", "call_ended"]  # not subscribed to it


async def test_following_a_number_subscribes_to_the_calls_with_it_already_active(
    proxy: RunningProxy,
) -> None:
    calls = [call_with(From=NUMBER), call_with(From=OTHER), call_with(To=NUMBER)]
    async with (
        TwilioPeer.started(proxy, calls[0]),
        TwilioPeer.started(proxy, calls[1]),
        TwilioPeer.started(proxy, calls[2]),
    ):
        async with connect(f"ws://127.0.0.1:{proxy.port}/viewer/ws", proxy=None) as viewer:
            await until_type(viewer, "calls")
            await viewer.send(json.dumps({"type": "follow", "number": NUMBER}))
            first = await until_type(viewer, "subscribed")
            second = await until_type(viewer, "subscribed")
    assert [first["callSid"], second["callSid"]] == [calls[0].call_sid, calls[2].call_sid]


async def test_following_something_that_is_not_a_number_is_an_error_not_a_close(
    proxy: RunningProxy,
) -> None:
    async with connect(f"ws://127.0.0.1:{proxy.port}/viewer/ws", proxy=None) as viewer:
        await until_type(viewer, "calls")
        await viewer.send(json.dumps({"type": "follow", "number": "CA123"}))
        error = await until_type(viewer, "error")
        assert error["number"] == "CA123" and error["code"] == 1008
        await viewer.send(json.dumps({"type": "follow", "number": NUMBER}))
        assert (await until_type(viewer, "followed"))["number"] == NUMBER


# Across instances.


async def test_a_client_and_a_viewer_on_one_instance_get_a_call_with_the_number_that_starts_on_another(  # noqa: E501
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with instances(deepgram, redis_server) as (a, b):
        by_number = await waiting(b, "(555) 0100")
        async with connect(f"ws://127.0.0.1:{b.port}/viewer/ws", proxy=None) as viewer:
            await until_type(viewer, "calls")
            await viewer.send(json.dumps({"type": "follow", "number": NUMBER}))
            await until_type(viewer, "followed")
            call = call_with(From=NUMBER)
            async with TwilioPeer.started(a, call) as twilio:
                local = await Watcher.join(a, call.call_sid)
                await visible(b, call.call_sid)
                await play(twilio)
                on_a, on_b = await asyncio.gather(local.transcript(), by_number.transcript())
                call_sid, seen = await viewer_call(viewer)
    assert on_a == sent_on(deepgram)
    assert on_b == on_a  # the whole call, its start included, though it began on A
    assert call_sid == call.call_sid
    # The viewer's way: the finals so far (the history), then live; each final once.
    kept = [json.loads(m) for m in on_a if is_history(m)]
    assert [m for m in seen if is_history(json.dumps(m))] == kept
