"""The `watch` command against a real proxy: which call it picks, what it prints, how it ends."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
import socket

import pytest

from twilio_dg_proxy.__main__ import main
from twilio_dg_proxy.commands.terminal_transcript import TranscriptRenderer
from twilio_dg_proxy.commands.watch import WatchError, WatchOptions, follow, watch
from twilio_dg_proxy.engine.synthetic import SyntheticStream
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ...timing import S
from ..helpers import RunningProxy, TwilioPeer, running_proxy, until

SECOND = 8000  # mu-law bytes per second per track


def options(proxy: RunningProxy, **changes: object) -> WatchOptions:
    return WatchOptions(url=f"ws://127.0.0.1:{proxy.port}", **changes)  # type: ignore[arg-type]


async def play(twilio: TwilioPeer, seconds: float = 1.0) -> None:
    n = int(seconds * SECOND)
    audio = {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}
    await twilio.send_all(twilio.call.frames(audio))  # type: ignore[arg-type]
    await twilio.stop()


async def subscribed(proxy: RunningProxy, before: int) -> None:
    await until(lambda: proxy.server.hub.counters.subscriptions > before)


def printed_lines(out: io.StringIO) -> tuple[list[str], list[str]]:
    lines = out.getvalue().splitlines()
    return [x for x in lines if x.startswith("Caller:")], [
        x for x in lines if x.startswith("Callee:")
    ]


async def test_without_a_call_sid_it_watches_the_newest_call_and_prints_both_speakers(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    older, newer = SimulatedCall(), SimulatedCall()
    out = io.StringIO()
    async with TwilioPeer.started(proxy, older), TwilioPeer.started(proxy, newer) as twilio:
        before = proxy.server.hub.counters.subscriptions
        watching = asyncio.create_task(watch(options(proxy), out, TranscriptRenderer(tty=False)))
        await subscribed(proxy, before)
        await play(twilio)
        assert await asyncio.wait_for(watching, 10 * S) == newer.call_sid
    caller, callee = printed_lines(out)
    assert caller and all(re.fullmatch(r"Caller: (ch0 w\d+ [0-9a-f]{8} ?)+", x) for x in caller)
    assert callee and all(re.fullmatch(r"Callee: (ch1 w\d+ [0-9a-f]{8} ?)+", x) for x in callee)
    # Every word the fake Deepgram said on the watched call was printed, in order.
    (stream,) = [s for s in deepgram.streams if s.closed.is_set()]
    assert " ".join(x.split(": ", 1)[1] for x in caller).split() == spoken(stream, channel=0)


def spoken(stream: SyntheticStream, *, channel: int) -> list[str]:
    """The words of the final results the fake sent on `channel`."""
    words: list[str] = []
    for text in stream.sent:
        message = json.loads(text)
        if message.get("type") == "Results" and message["channel_index"][0] == channel:
            if message["is_final"]:
                words += message["channel"]["alternatives"][0]["transcript"].split()
    return words


async def test_with_no_call_active_it_waits_for_the_next_one(
    proxy: RunningProxy, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    watching = asyncio.create_task(watch(options(proxy), out, TranscriptRenderer(tty=False)))
    await until(lambda: "no active call yet: waiting" in capsys.readouterr().err)
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        await subscribed(proxy, 0)
        await play(twilio)
    assert await asyncio.wait_for(watching, 10 * S) == call.call_sid
    assert printed_lines(out)[0]


async def test_a_named_call_that_is_not_active_is_an_error_listing_the_active_ones(
    proxy: RunningProxy,
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call):
        with pytest.raises(WatchError, match=f"CAnope is not an active call .*{call.call_sid}"):
            await watch(
                options(proxy, call_sid="CAnope"), io.StringIO(), TranscriptRenderer(tty=False)
            )


async def test_it_gives_up_after_the_wait(proxy: RunningProxy) -> None:
    with pytest.raises(TimeoutError):
        await watch(options(proxy, wait_s=0.2), io.StringIO(), TranscriptRenderer(tty=False))


def test_the_command_says_plainly_when_no_proxy_listens(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # closed again before the command runs: refused
    status = main(["watch", "--url", f"ws://127.0.0.1:{port}", "--wait", "5"])
    err = capsys.readouterr().err
    assert status == 1
    assert f"ws://127.0.0.1:{port}" in err and "Traceback" not in err


# Following a number.


async def test_following_a_number_watches_each_call_with_it_one_after_another(
    proxy: RunningProxy, deepgram: FakeDeepgram, capsys: pytest.CaptureFixture[str]
) -> None:
    out = io.StringIO()
    renderer = TranscriptRenderer(tty=False)
    following = asyncio.create_task(
        follow(options(proxy, number="+15550100"), out, renderer, calls=2)
    )
    hub = proxy.server.hub
    await until(lambda: len(hub._waiters) == 1)
    calls = [
        SimulatedCall(custom_parameters={"From": "+1 555-0100"}),
        SimulatedCall(custom_parameters={"To": "+15550100"}),
    ]
    for index, call in enumerate(calls):
        async with TwilioPeer.started(proxy, call) as twilio:
            await play(twilio)
        if index == 0:  # it asks again after the first call's `close`
            await until(lambda: len(hub._waiters) == 1)
    assert await asyncio.wait_for(following, 10 * S) == 2
    first, second = deepgram.streams
    caller = printed_lines(out)[0]
    said = " ".join(x.split(": ", 1)[1] for x in caller).split()
    assert said == spoken(first, channel=0) + spoken(second, channel=0)
    assert "waiting for the next call with +15550100" in capsys.readouterr().err


async def test_following_a_number_asks_again_when_the_proxys_wait_runs_out(
    deepgram: FakeDeepgram, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="twilio_dg_proxy")

    def waits() -> int:
        return sum("waits up to" in r.getMessage() for r in caplog.records)

    async with running_proxy(deepgram.url, NUMBER_WAIT_S="0.2") as proxy:
        following = asyncio.create_task(
            follow(options(proxy, number="5550100"), io.StringIO(), TranscriptRenderer(tty=False))
        )
        hub = proxy.server.hub
        await until(lambda: waits() >= 2)  # the proxy's first wait ended; it asked again
        assert not following.done()
        async with TwilioPeer.started(proxy, SimulatedCall(custom_parameters={"From": "5550100"})):
            await until(lambda: hub.subscriber_count() == 1)
        following.cancel()
        with pytest.raises(asyncio.CancelledError):
            await following
