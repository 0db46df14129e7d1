"""/client's additions over real sockets: the opt-in history and the refusal text. A client
that does not opt in and chooses an active call gets the tutorial's protocol unchanged."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.hub import is_history
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import RunningProxy, TwilioPeer, Watcher, running_proxy, until


def audio(seconds: float) -> dict[Track, bytes]:
    n = int(seconds * 8000)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


async def join(proxy: RunningProxy, query: str, choice: str) -> tuple[ClientConnection, list[str]]:
    """Connect to /client`query`, read the call list, choose `choice`, and wait until
    subscribed (or closed)."""
    hub = proxy.server.hub
    before = hub.counters.subscriptions
    ws = await connect(proxy.client_url + query, proxy=None)
    listed = json.loads(await ws.recv())
    await ws.send(choice + "\n")
    await until(lambda: hub.counters.subscriptions > before or ws.close_code is not None)
    return ws, listed


async def everything(ws: ClientConnection, within: float = 10 * S) -> list[str]:
    """Every text until the connection closes, whatever its close code."""
    messages: list[str] = []
    async with asyncio.timeout(within):
        try:
            async for message in ws:
                assert isinstance(message, str)
                messages.append(message)
        except ConnectionClosed:
            pass
    return messages


async def test_a_late_client_asking_for_history_gets_every_final_once_then_live_then_close(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    frames = call.frames(audio(2.0))
    async with TwilioPeer.started(proxy, call) as twilio:
        await twilio.send_all(frames[: len(frames) // 2])
        await until(lambda: proxy.server.hub.counters.published >= 10)
        late, listed = await join(proxy, "?history=1", call.call_sid)
        plain, _ = await join(proxy, "", call.call_sid)  # alongside: the tutorial's client
        await twilio.send_all(frames[len(frames) // 2 :])
        await twilio.stop()
        received = await everything(late)
        tutorial = await everything(plain)
    sent = deepgram.streams[0].sent
    assert listed == [call.call_sid]
    assert received[-1] == "close" and late.close_code == 1000
    assert tutorial[-1] == "close" and plain.close_code == 1000
    # The plain client joined a moment after the late one: it saw only what came live.
    plain_joined_at = len(sent) - len(tutorial[:-1])
    assert tutorial[:-1] == sent[plain_joined_at:]
    # The late one: the finals before it joined, then every message after, each once.
    seams = [i for i in range(len(sent) + 1) if received[:-1] == _expected(sent, i)]
    assert seams, "the history and the live messages do not join up"
    assert 0 < seams[0] <= plain_joined_at < len(sent)
    assert any(is_history(text) for text in sent[: seams[0]])  # something was replayed


def _expected(sent: list[str], joined_at: int) -> list[str]:
    """What a client asking for history receives if it joined after `joined_at` messages."""
    return [text for text in sent[:joined_at] if is_history(text)] + sent[joined_at:]


async def test_unknown_query_parameters_change_nothing(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        await twilio.send_all(call.frames(audio(1.0)))
        await until(lambda: proxy.server.hub.counters.published >= 3)
        ws, listed = await join(proxy, "?foo=bar&History=1", call.call_sid)
        await twilio.stop()
        received = await everything(ws)
    sent = deepgram.streams[0].sent
    assert listed == [call.call_sid]
    assert received[-1] == "close" and ws.close_code == 1000
    # Only what came after it joined (a suffix of Deepgram's messages), no finals before.
    joined_at = len(sent) - len(received[:-1])
    assert received[:-1] == sent[joined_at:]
    assert any(is_history(text) for text in sent[:joined_at])


async def test_a_bad_history_value_is_refused_with_a_text_saying_why(proxy: RunningProxy) -> None:
    async with connect(proxy.client_url + "?history=please", proxy=None) as ws:
        received = await everything(ws)
    assert received == ["error: history='please': expected 1 or 0"]
    assert ws.close_code == 1008 and "expected 1 or 0" in (ws.close_reason or "")


async def test_an_unknown_callsid_gets_a_text_naming_the_active_calls_then_1008(
    proxy: RunningProxy,
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        ws, listed = await join(proxy, "", "CAnope")
        received = await everything(ws)
        await twilio.stop()
    assert listed == [call.call_sid]
    assert received == [
        f"error: unknown callSid 'CAnope': not an active call; active calls: {json.dumps(listed)}"
    ]
    assert ws.close_code == 1008 and "unknown callSid 'CAnope'" in (ws.close_reason or "")


async def test_a_full_call_refuses_with_a_text_then_1013(deepgram: FakeDeepgram) -> None:
    async with running_proxy(deepgram.url, MAX_SUBSCRIBERS_PER_CALL="1") as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            first = await Watcher.join(proxy, call.call_sid)
            ws, _ = await join(proxy, "?history=1", call.call_sid)
            received = await everything(ws)
            await twilio.stop()
            await first.transcript()  # the first watcher's feed goes on to its normal end
    assert received == [f"error: call {call.call_sid} has 1 subscribers"]
    assert ws.close_code == 1013


async def test_a_valid_choice_gets_no_error_text(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        ws, _ = await join(proxy, "", call.call_sid)
        await twilio.send_all(call.frames(audio(0.5)))
        await twilio.stop()
        received = await everything(ws)
    assert received == deepgram.streams[0].sent + ["close"]
