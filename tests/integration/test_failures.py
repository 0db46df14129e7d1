"""Bad input and failing peers: the affected connection gets a clear close, the rest carries on."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import (
    PROXY_ENV,
    RunningProxy,
    TwilioPeer,
    Watcher,
    both_receive_modes,
    drained,
    pausing_client,
    results,
    running_proxy,
    send_text,
    stuck_client,
    until,
)

pytestmark = both_receive_modes

SECOND = 8000


def audio(seconds: float) -> dict[str, bytes]:
    n = int(seconds * SECOND)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


async def healthy_call(proxy: RunningProxy, seconds: float = 0.5) -> list[str]:
    """A complete, well-behaved call watched by one client; returns its transcript."""
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(audio(seconds)))  # type: ignore[arg-type]
        await twilio.stop()
        return await watcher.transcript()


async def test_malformed_twilio_message_closes_only_that_stream_and_keeps_its_transcript(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        other = asyncio.create_task(healthy_call(proxy))
        await twilio.send_all(call.frames(audio(0.3)))  # type: ignore[arg-type]
        await twilio.ws.send('{"event": "media", "sequenceNumber": "x"}')
        await twilio.ws.wait_closed()
        assert twilio.ws.close_code == 1008
        assert "media" in (twilio.ws.close_reason or "")
        transcript = await watcher.transcript()
    assert len(results(transcript)) >= 6  # what was said before the bad message
    assert len(results(await other)) >= 10
    assert f"[{call.call_sid}] closing Twilio stream (1008)" in caplog.text


@pytest.mark.parametrize(
    ("first", "code", "words"),
    [
        (b"\x00binary", 1003, "binary"),
        ("not json", 1008, "JSON"),
        ('{"event": "media", "sequenceNumber": "1", "media": {}}', 1008, "media"),
    ],
)
async def test_bad_first_message_is_refused_with_a_reason(
    proxy: RunningProxy, first: str | bytes, code: int, words: str
) -> None:
    async with connect(proxy.twilio_url, proxy=None) as ws:
        await ws.send(first)
        await ws.wait_closed()
    assert ws.close_code == code
    assert words in (ws.close_reason or "")
    await healthy_call(proxy)


async def test_unknown_callsid_is_refused_with_a_reason(proxy: RunningProxy) -> None:
    async with connect(proxy.client_url, proxy=None) as ws:
        assert json.loads(await ws.recv()) == []
        await ws.send("CAnope")
        await ws.wait_closed()
    assert ws.close_code == 1008
    assert "CAnope" in (ws.close_reason or "")


async def test_a_client_sending_binary_instead_of_a_callsid_is_refused(proxy: RunningProxy) -> None:
    async with connect(proxy.client_url, proxy=None) as ws:
        await ws.recv()
        await ws.send(b"CA123")
        await ws.wait_closed()
    assert ws.close_code == 1008


async def test_second_stream_for_the_same_call_is_refused(proxy: RunningProxy) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call):
        async with connect(proxy.twilio_url, proxy=None) as ws:
            await ws.send(call.connected())
            await ws.send(call.start())
            await ws.wait_closed()
        assert ws.close_code == 1008
        assert "already streaming" in (ws.close_reason or "")


async def test_a_client_that_vanishes_mid_call_does_not_disturb_the_call(
    proxy: RunningProxy,
) -> None:
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        steady = await Watcher.join(proxy, call.call_sid)
        vanishing = await Watcher.join(proxy, call.call_sid)
        await twilio.send_all(call.frames(audio(0.3)))  # type: ignore[arg-type]
        vanishing.ws.transport.abort()  # no close frame, like a killed process
        await until(lambda: proxy.server.hub.subscriber_count() == 1)
        await twilio.send_all(call.frames(audio(0.3)))  # type: ignore[arg-type]
        await twilio.stop()
        assert len(results(await steady.transcript())) >= 12


async def test_a_client_that_never_reads_is_cut_off_and_others_get_everything() -> None:
    async with FakeDeepgram(result_ms=20) as deepgram:
        async with running_proxy(deepgram.url, CLIENT_QUEUE_SIZE="200") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                steady = await Watcher.join(proxy, call.call_sid)
                stuck = stuck_client(proxy.port, "/client")
                await asyncio.sleep(0.1 * S)  # its upgrade first (a raw socket has no handshake)
                # The callSid; then this client never reads again.
                send_text(stuck, call.call_sid.encode())
                await until(lambda: proxy.server.hub.subscriber_count() == 2)
                steady_reads = asyncio.create_task(steady.transcript(within=30 * S))
                # A minute of audio at 20x real time: 12,000 results of ~600 bytes.
                await twilio.send_all(call.frames(audio(60)), speed=20)  # type: ignore[arg-type]
                await until(lambda: proxy.server.hub.counters.evicted == 1, within=20 * S)
                await twilio.stop()
                transcript = await steady_reads
                stuck.close()
            assert transcript == deepgram.streams[0].sent
            assert len(transcript) > 12000


async def test_a_client_that_stops_reading_receives_1013_when_it_reads_again() -> None:
    async with FakeDeepgram(result_ms=20) as deepgram:
        async with running_proxy(deepgram.url, CLIENT_QUEUE_SIZE="200") as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                slow = await pausing_client(proxy.port, "/client")
                assert call.call_sid in json.loads(await slow.recv())
                await slow.send(call.call_sid)
                await until(lambda: proxy.server.hub.subscriber_count() == 1)
                # It reads nothing more while a minute of audio goes by at 20x real time.
                sending = asyncio.create_task(
                    twilio.send_all(call.frames(audio(60)), speed=20)  # type: ignore[arg-type]
                )
                await until(lambda: proxy.server.hub.counters.evicted == 1, within=20 * S)
                # Now it reads: what was on its way, then the close frame the proxy sent.
                received = await drained(slow)
                await sending
                await twilio.stop()
            assert slow.close_code == 1013, (slow.close_code, slow.close_reason)
            assert "too slow" in (slow.close_reason or "")
            assert "close" not in received  # not the end of the call
            assert received == deepgram.streams[0].sent[: len(received)]


async def test_deepgram_refusing_the_key_closes_subscribers_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with held_refusal() as (url, release):
        # No start-up check: this stand-in answers nothing until `release` (the call's turn).
        async with running_proxy(
            url, DEEPGRAM_API_KEY="wrong-key", DEEPGRAM_START_CHECK="off"
        ) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                release.set()
                code, reason, _ = await watcher.closed()
                await twilio.ws.wait_closed()
            assert code == 1014 and "401" in reason and "Invalid credentials" in reason
            assert twilio.ws.close_code == 1014
            assert "HTTP 401: Invalid credentials." in caplog.text
            assert "wrong-key" not in caplog.text  # the key itself is never logged
            await assert_server_healthy(proxy)


@asynccontextmanager
async def held_refusal() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A Deepgram stand-in that answers the upgrade with 401 once `release` is set, so a
    client can subscribe before the refusal arrives."""
    release = asyncio.Event()

    async def refuse(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await release.wait()
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ndg-error: Invalid credentials.\r\n"
            b"dg-request-id: r-1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(refuse, "127.0.0.1", 0)
    async with server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/listen", release


async def test_deepgram_refusal_at_once_fails_the_call_with_dg_error() -> None:
    async with FakeDeepgram(api_key="right") as deepgram:
        # warn: started despite the refused key, so that a call meets the refusal.
        async with running_proxy(
            deepgram.url, DEEPGRAM_API_KEY="wrong", DEEPGRAM_START_CHECK="warn"
        ) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                await twilio.ws.wait_closed()
            assert twilio.ws.close_code == 1014
            assert "Invalid credentials" in (twilio.ws.close_reason or "")
            await assert_server_healthy(proxy)


async def assert_server_healthy(proxy: RunningProxy) -> None:
    """The server still answers and holds nothing of the failed call."""
    status, _, body = await asyncio.to_thread(_get, f"http://127.0.0.1:{proxy.port}/healthz")
    assert status == 200
    health = json.loads(body)
    assert (health["status"], health["calls"], health["subscribers"]) == ("ok", 0, 0)


async def test_deepgram_dropping_mid_call_closes_subscribers_and_twilio_cleanly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with FakeDeepgram(result_ms=100, drop_after_s=0.3) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                watcher = await Watcher.join(proxy, call.call_sid)
                sender = asyncio.create_task(
                    twilio.send_all(call.frames(audio(2.0)), speed=1)  # type: ignore[arg-type]
                )
                code, reason, messages = await watcher.closed()
                await twilio.ws.wait_closed()
                sender.cancel()
            assert code == 1014 and "NET-0000" in reason
            assert len(results(messages)) >= 2  # results before the drop were delivered
            assert twilio.ws.close_code == 1014
            assert f"[{call.call_sid}] transcription failed" in caplog.text


async def test_unreachable_deepgram_fails_the_call_not_the_server() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    async with running_proxy(f"ws://127.0.0.1:{port}/v1/listen") as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            await twilio.ws.wait_closed()
        assert twilio.ws.close_code == 1014
        assert "cannot reach" in (twilio.ws.close_reason or "")


async def test_missing_api_key_for_deepgram_cloud_says_what_to_do() -> None:
    async with running_proxy("wss://api.deepgram.com/v1/listen") as proxy:
        call = SimulatedCall()
        async with TwilioPeer.started(proxy, call) as twilio:
            await twilio.ws.wait_closed()
        assert twilio.ws.close_code == 1014
        assert "DEEPGRAM_API_KEY is not set" in (twilio.ws.close_reason or "")


async def test_unknown_path_is_refused_at_the_upgrade_with_404(proxy: RunningProxy) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://127.0.0.1:{proxy.port}/nope", proxy=None):
            pass
    assert refused.value.response.status_code == 404


async def test_health_and_index_answer_plain_http(proxy: RunningProxy) -> None:
    base = f"http://127.0.0.1:{proxy.port}"
    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call):
        await Watcher.join(proxy, call.call_sid)
        health = await asyncio.to_thread(_get, f"{base}/healthz")
    assert health[0] == 200 and health[1] == "application/json"
    status = json.loads(health[2])
    assert (status["status"], status["calls"], status["subscribers"]) == ("ok", 1, 1)
    assert status["totals"]["calls"] == 1 and status["totals"]["deepgram_reconnects"] == 0
    index = await asyncio.to_thread(_get, f"{base}/")
    assert index[0] == 200 and "/twilio" in index[2]
    assert (await asyncio.to_thread(_get, f"{base}/twilio"))[0] == 426
    assert (await asyncio.to_thread(_get, f"{base}/favicon.ico"))[0] == 404


def _get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


@pytest.fixture(autouse=True)
def _info_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="twilio_dg_proxy")


@pytest.mark.parametrize("where", ["mixing Twilio's audio", "publishing Deepgram's results"])
async def test_a_bug_in_one_call_fails_only_that_call_with_1011(
    proxy: RunningProxy, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # Nothing real can make the proxy's own code raise, so a patched part plays the bug. Both
    # run in socket callbacks (no task of their own), which must not let it escape.
    from twilio_dg_proxy.hub import Hub
    from twilio_dg_proxy.mixer import StereoMixer

    original_push = StereoMixer.push

    def broken_push(self: StereoMixer, track: str, timestamp_ms: int, payload: bytes) -> None:
        if timestamp_ms >= 100:
            raise RuntimeError("injected bug")
        original_push(self, track, timestamp_ms, payload)  # type: ignore[arg-type]

    def broken_publish(self: Hub, call_sid: str, text: str) -> None:
        raise RuntimeError("injected bug")

    call = SimulatedCall()
    async with TwilioPeer.started(proxy, call) as twilio:
        watcher = await Watcher.join(proxy, call.call_sid)
        if where == "mixing Twilio's audio":
            monkeypatch.setattr(StereoMixer, "push", broken_push)
        else:
            monkeypatch.setattr(Hub, "publish", broken_publish)
        await twilio.send_all(call.frames(audio(0.2)))  # type: ignore[arg-type]
        code, reason, _ = await watcher.closed()
        await twilio.ws.wait_closed()
    monkeypatch.undo()
    assert code == 1011 and reason == "internal error"
    assert twilio.ws.close_code == 1011
    assert len(results(await healthy_call(proxy))) >= 10


async def test_a_stream_that_never_starts_is_closed(deepgram: FakeDeepgram) -> None:
    async with (
        running_proxy(deepgram.url, {"start_timeout_s": 0.2}) as proxy,
        connect(proxy.twilio_url, proxy=None) as ws,
    ):
        await ws.send(SimulatedCall().connected())
        await ws.wait_closed()
    assert ws.close_code == 1008 and "no start within" in (ws.close_reason or "")


async def test_a_client_that_never_chooses_is_closed(deepgram: FakeDeepgram) -> None:
    from twilio_dg_proxy.config import Settings
    from twilio_dg_proxy.server import ProxyServer, bound_port

    settings = Settings.from_env(
        {"DEEPGRAM_URL": deepgram.url, "HOST": "127.0.0.1", "PORT": "0"} | PROXY_ENV
    )
    async with ProxyServer(settings, choice_timeout_s=0.2).running() as server:
        async with connect(f"ws://127.0.0.1:{bound_port(server)}/client", proxy=None) as ws:
            await ws.recv()
            await ws.wait_closed()
    assert ws.close_code == 1008 and "no callSid chosen" in (ws.close_reason or "")
