"""Hostile clients (issue 11): each costs only its own connection, within limits that
apply from its first byte.

Raw peers (`raw_peer.RawPeer`) send what no well-behaved client does; every loop here is
bounded in count and time, and every target is 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
from websockets.asyncio.server import Server

from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.direct_connection import GuardedConnection
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.server import ProxyServer, bound_port
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import (
    PROXY_ENV,
    RunningProxy,
    TwilioPeer,
    Watcher,
    both_receive_modes,
    running_proxy,
    until,
)
from .raw_peer import CLOSE, PING, PONG, TEXT, RawPeer, frame, frame_header, upgrade_request

pytestmark = both_receive_modes

TWILIO_LIMIT = 64 << 10
CLIENT_LIMIT = 4096


@pytest.fixture
async def proxy() -> AsyncIterator[RunningProxy]:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(
            deepgram.url,
            TWILIO_MAX_MESSAGE_BYTES=str(TWILIO_LIMIT),
            CLIENT_MAX_MESSAGE_BYTES=str(CLIENT_LIMIT),
        ) as running:
            yield running


# --- 1. Limits apply from the first byte ------------------------------------------------

OVERSIZED = [
    ("/twilio", TWILIO_LIMIT + 1),
    ("/twilio", 8_000_000),
    ("/client", CLIENT_LIMIT + 1),
    ("/viewer/ws", CLIENT_LIMIT + 1),
]
# When the oversized message goes: in the same write as the upgrade request (so in its
# read), in a write of its own before the 101 is read, or after the 101 (the reference).
WHEN = ("with the request", "before the 101", "after the 101")


async def refusal(port: int, path: str, size: int, when: str) -> tuple[int, int, str]:
    """(status, close code, reason) for a text message of `size` bytes on `path`, of which
    only the header and 1 KB are sent: the limit must be applied from the header alone,
    without waiting for (or holding) the rest."""
    message = frame_header(TEXT, size) + b"x" * 1024
    async with RawPeer.connected(port) as peer:
        if when == "with the request":
            peer.send(upgrade_request(path) + message)
        else:
            peer.send(upgrade_request(path))
            await peer.writer.drain()
            if when == "before the 101":
                peer.send(message)
        status = await peer.status()
        if when == "after the 101":
            peer.send(message)
        code, reason = await peer.close_frame()
    return status, code, reason


@pytest.mark.parametrize(("path", "size"), OVERSIZED, ids=[f"{p} {s}" for p, s in OVERSIZED])
async def test_an_oversized_first_message_gets_1009_however_early_it_comes(
    proxy: RunningProxy, path: str, size: int
) -> None:
    answers = {when: await refusal(proxy.port, path, size, when) for when in WHEN}
    reference = answers["after the 101"]
    assert reference[:2] == (101, 1009), reference
    assert answers == dict.fromkeys(WHEN, reference)


# --- 2. A connection that fails is failed -----------------------------------------------

# How long the proxy would wait for a peer's close: long, so that a TCP close that waits
# for it cannot pass for a prompt one.
CLOSE_TIMEOUT = 60 * S
PROMPT = 5 * S  # far below CLOSE_TIMEOUT


@dataclass
class Listening(RunningProxy):
    """A running proxy and its websockets `Server` (whose `connections` a test may watch)."""

    listening: Server


@asynccontextmanager
async def proxy_closing_slowly(deepgram_url: str, **env: str) -> AsyncIterator[Listening]:
    """A proxy whose connections wait CLOSE_TIMEOUT for a peer's close."""
    settings = Settings.from_env(
        {"DEEPGRAM_URL": deepgram_url, "HOST": "127.0.0.1", "PORT": "0"} | PROXY_ENV | env
    )
    server = ProxyServer(settings, close_timeout_s=CLOSE_TIMEOUT)
    async with server.running() as listening:
        yield Listening(server, bound_port(listening), listening)


@pytest.mark.parametrize("started", [False, True], ids=["before start", "after start"])
async def test_invalid_utf8_fails_the_connection_without_waiting_for_the_peer(
    started: bool,
) -> None:
    """RFC 6455 8.1: invalid UTF-8 fails the connection. The peer here never answers the
    close frame: the proxy's end of TCP must come anyway, long before CLOSE_TIMEOUT."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(deepgram.url) as proxy:
            counters = proxy.server.hub.counters
            call = SimulatedCall(tracks=("inbound",))
            async with RawPeer.connected(proxy.port) as peer:
                peer.send(upgrade_request("/twilio"))
                assert await peer.status() == 101
                peer.send(frame(TEXT, call.connected().encode()))
                if started:
                    peer.send(frame(TEXT, call.start().encode()))
                    await until(lambda: counters.calls == 1)
                peer.send(frame(TEXT, b'{"event": "media\xff"}'))
                code, _ = await peer.close_frame()
                assert code == 1007
                assert await peer.end_of_stream(within=PROMPT) == b""


@pytest.mark.parametrize(("path", "status"), [("/nowhere", 404), ("/viewer/missing.js", 404)])
async def test_a_refused_upgrade_lets_its_connection_go_when_the_peer_leaves(
    path: str, status: int
) -> None:
    """After an HTTP answer other than 101 websockets waits for the peer's end: the proxy,
    which holds reading until its response, must read on then, or each refused connection
    lingers until CLOSE_TIMEOUT (and the server's shutdown waits for it)."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with asyncio.timeout(PROMPT), proxy_closing_slowly(deepgram.url) as proxy:
            async with RawPeer.connected(proxy.port) as peer:
                peer.send(upgrade_request(path))
                assert await peer.status() == status


# --- 2b. What a /client watcher sends after its choice ------------------------------------
# (its messages go to a sink from the socket callbacks, not to recv(): the same answers)


async def upgraded_watcher(peer: RawPeer, call_sid: str | None) -> list[str]:
    """Upgrade `peer` on /client, read the call list; choose `call_sid` if given."""
    peer.send(upgrade_request("/client"))
    assert await peer.status() == 101
    opcode, listed = await peer.frame()
    assert opcode == TEXT
    if call_sid is not None:
        peer.send(frame(TEXT, call_sid.encode() + b"\n"))
    return list(json.loads(listed))


@pytest.mark.parametrize("when", ["as its choice", "after its choice"])
async def test_a_watcher_sending_invalid_utf8_is_failed_as_websockets_recv_fails_it(
    when: str,
) -> None:
    """1007 with websockets' own reason, the connection's end without waiting for the peer,
    its subscription gone; the call and its other watchers go on."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(deepgram.url) as proxy:
            hub = proxy.server.hub
            call = SimulatedCall()
            async with TwilioPeer.started(proxy, call) as twilio:
                other = await Watcher.join(proxy, call.call_sid)
                async with RawPeer.connected(proxy.port) as peer:
                    chooses = call.call_sid if when == "after its choice" else None
                    assert await upgraded_watcher(peer, chooses) == [call.call_sid]
                    if chooses:
                        await until(lambda: hub.subscriber_count() == 2)
                    peer.send(frame(TEXT, b"CA\xff"))
                    assert await peer.close_frame() == (1007, "invalid start byte at position 2")
                    assert await peer.end_of_stream(within=PROMPT) == b""
                await until(lambda: hub.subscriber_count() == 1)
                await twilio.send_all(call.frames(tone(0.5)))
                await twilio.stop()
                assert await other.transcript() == deepgram.streams[0].sent
    assert hub.counters.subscriptions == (2 if chooses else 1)


async def test_a_watcher_that_talks_after_its_choice_gets_every_result_all_the_same() -> None:
    """Text, binary (fragmented too) and pings after the choice are ignored (pings answered)."""
    call = SimulatedCall()
    async with watched_call(call) as (proxy, deepgram, twilio):
        watcher = await Watcher.join(proxy, call.call_sid)
        await watcher.ws.send("CAsomething else")
        await watcher.ws.send(b"\x00\xff binary")
        await watcher.ws.send(["frag", "mented"])
        for _ in range(5):
            await watcher.ws.ping()
        await twilio.send_all(call.frames(tone(0.5)))
        await twilio.stop()
        assert await watcher.transcript() == deepgram.streams[0].sent
    assert proxy.server.hub.counters.subscriptions == 1


@pytest.mark.parametrize("how", ["closes", "drops its TCP connection"])
async def test_a_watcher_leaving_mid_call_is_unsubscribed_and_the_call_goes_on(how: str) -> None:
    call = SimulatedCall()
    async with watched_call(call) as (proxy, deepgram, twilio):
        hub = proxy.server.hub
        leaving = await Watcher.join(proxy, call.call_sid)
        staying = await Watcher.join(proxy, call.call_sid)
        frames = call.frames(tone(1.0))
        await twilio.send_all(frames[: len(frames) // 2])
        await until(lambda: hub.counters.published >= 2)
        if how == "closes":
            await leaving.ws.close()
        else:
            leaving.ws.transport.abort()
        await until(lambda: hub.subscriber_count() == 1)
        await twilio.send_all(frames[len(frames) // 2 :])
        await twilio.stop()
        assert await staying.transcript() == deepgram.streams[0].sent


@asynccontextmanager
async def watched_call(
    call: SimulatedCall,
) -> AsyncIterator[tuple[RunningProxy, FakeDeepgram, TwilioPeer]]:
    """A proxy (default limits), its fake Deepgram, and `call` started on it."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            async with TwilioPeer.started(proxy, call) as twilio:
                yield proxy, deepgram, twilio


def tone(seconds: float) -> dict[Track, bytes]:
    n = int(seconds * 8000)
    return {"inbound": pattern("inbound", n), "outbound": pattern("outbound", n)}


# --- 3. Control frames cannot starve the server -----------------------------------------

PINGS_PER_WRITE = 20_000  # empty pings: 120 KB a write
FLOOD_WRITES = 5


def interleaved(audio: dict[str, bytes]) -> bytes:
    out = bytearray(2 * len(audio["inbound"]))
    out[0::2], out[1::2] = audio["inbound"], audio["outbound"]
    return bytes(out)


@pytest.mark.parametrize("path", ["/twilio", "/client"])
async def test_a_ping_flood_is_closed_and_counted_while_a_call_goes_on(path: str) -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url, CHUNK_MS="20") as proxy:
            counters = proxy.server.hub.counters
            call = SimulatedCall()
            audio = {"inbound": pattern("inbound", 8000), "outbound": pattern("outbound", 8000)}
            async with TwilioPeer.started(proxy, call) as twilio:
                sending = asyncio.create_task(twilio.send_all(call.frames(audio), speed=1))  # type: ignore[arg-type]
                async with RawPeer.connected(proxy.port) as flooder:
                    flooder.send(upgrade_request(path))
                    assert await flooder.status() == 101
                    for _ in range(FLOOD_WRITES):
                        flooder.send(frame(PING, b"") * PINGS_PER_WRITE)
                        await asyncio.sleep(0)
                    assert await flooder.close_frame() == (1008, "too many control frames")
                await sending
                await twilio.stop()
            [stream] = deepgram.streams  # one Deepgram stream: never dropped, never reopened
            await asyncio.wait_for(stream.closed.wait(), 5 * S)
    assert bytes(stream.audio) == interleaved(audio)
    assert stream.controls[-1] == "CloseStream"
    assert counters.control_floods == 1
    assert counters.deepgram_reconnects == 0


BURST = 20
ONE_READ = 5_000  # pings in one write: 30 KB, which the proxy reads at once (or in a few)
PATHS = ("/twilio", "/client", "/viewer/ws")


@pytest.mark.parametrize("when", ["with the request", "after the 101"])
@pytest.mark.parametrize("path", PATHS)
async def test_a_read_of_thousands_of_pings_gets_at_most_the_burst_in_pongs(
    path: str, when: str
) -> None:
    """The budget applies before websockets parses the read, which would else answer every
    ping in it before the budget could close the connection. Pings sent with the request
    are held until the 101 and parsed as one read."""
    pings = frame(PING, b"") * ONE_READ
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(
            deepgram.url,
            CONTROL_FRAMES_BURST=str(BURST),
            CONTROL_FRAMES_PER_SECOND="0.1",  # no token comes back while the test runs
        ) as proxy:
            async with RawPeer.connected(proxy.port) as flooder:
                if when == "with the request":
                    flooder.send(upgrade_request(path) + pings)
                    assert await flooder.status() == 101
                else:
                    flooder.send(upgrade_request(path))
                    assert await flooder.status() == 101
                    flooder.send(pings)
                sent, close = await flooder.frames_until_close()
            assert close == (1008, "too many control frames")
            assert sent[PONG] == BURST  # (/client greets with a text message first)
            assert proxy.server.hub.counters.control_floods == 1


async def test_a_flood_is_cut_during_the_closing_handshake_too() -> None:
    """A peer may flood instead of answering the proxy's close frame: websockets answers
    pings then too, until close_timeout. The budget applies all the same, and the proxy
    ends its side of TCP at once."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(
            deepgram.url, CONTROL_FRAMES_BURST=str(BURST), CONTROL_FRAMES_PER_SECOND="0.1"
        ) as proxy:
            async with RawPeer.connected(proxy.port) as flooder:
                flooder.send(upgrade_request("/twilio"))
                assert await flooder.status() == 101
                flooder.send(frame(TEXT, b"not a Twilio message"))
                assert (await flooder.close_frame())[0] == 1008
                flooder.send(frame(PING, b"") * ONE_READ)
                rest = await flooder.end_of_stream(within=PROMPT)
            assert rest == bytes([0x80 | PONG, 0]) * BURST  # BURST empty pongs, then the end
            assert proxy.server.hub.counters.control_floods == 1


async def test_pings_after_the_peers_close_are_discarded_not_counted(
    proxy: RunningProxy,
) -> None:
    """websockets parses nothing after a peer's close frame, so pings that follow it in the
    same read cost nothing: no pong, and no flood counted."""
    close = frame(CLOSE, (1000).to_bytes(2, "big"))
    async with RawPeer.connected(proxy.port) as peer:
        peer.send(upgrade_request("/twilio"))
        assert await peer.status() == 101
        peer.send(close + frame(PING, b"") * ONE_READ)
        assert await peer.end_of_stream(within=PROMPT) == bytes([0x80 | CLOSE, 2]) + close[6:]
    assert proxy.server.hub.counters.control_floods == 0


WRITE_CAP = 64 << 10
PONG_FRAME = 2 + 125  # the largest pong: a 125-byte payload
PING_BATCH = 500
MAX_BATCHES = 400  # 200,000 pings, 26 MB: far more than the kernel's buffers can absorb


async def test_a_client_that_pings_but_never_reads_is_dropped_at_the_write_cap() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(
            deepgram.url,
            WRITE_BUFFER_MAX_BYTES=str(WRITE_CAP),
            CONTROL_FRAMES_PER_SECOND="1000000",  # only the write cap is tested here
            CONTROL_FRAMES_BURST="1000000",
        ) as proxy:
            counters = proxy.server.hub.counters
            async with RawPeer.connected(proxy.port, rcvbuf=2048) as peer:
                peer.send(upgrade_request("/client"))
                await until(lambda: len(proxy.listening.connections) == 1)
                [ws] = proxy.listening.connections
                transport = ws.transport
                peak = 0
                write = transport.write

                def recording(data: bytes | bytearray | memoryview) -> None:
                    nonlocal peak
                    write(data)
                    peak = max(peak, transport.get_write_buffer_size())

                transport.write = recording  # type: ignore[method-assign]
                ping = frame(PING, b"p" * 125)
                for _ in range(MAX_BATCHES):
                    if counters.write_buffer_overflows or transport.is_closing():
                        break
                    peer.send(ping * PING_BATCH)
                    try:
                        async with asyncio.timeout(5 * S):
                            await peer.writer.drain()
                    except ConnectionError:
                        break
                await until(lambda: not proxy.listening.connections)
    assert counters.write_buffer_overflows == 1
    assert WRITE_CAP < peak <= WRITE_CAP + PONG_FRAME


# --- 4. Unauthenticated connections are cheap ------------------------------------------

MAX_PENDING = 3


async def test_pending_streams_are_bounded_and_the_next_is_refused_with_503() -> None:
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(
            deepgram.url, {"start_timeout_s": 60 * S}, MAX_PENDING_STREAMS=str(MAX_PENDING)
        ) as proxy:
            counters = proxy.server.hub.counters

            def pending() -> object:
                return proxy.server.health()["pending"]

            async with (
                RawPeer.connected(proxy.port) as first,
                RawPeer.connected(proxy.port) as second,
                RawPeer.connected(proxy.port) as third,
            ):
                for peer in (first, second, third):
                    peer.send(upgrade_request("/twilio"))
                    assert await peer.status() == 101
                assert pending() == MAX_PENDING
                assert await status_of_one_more(proxy.port) == 503
                assert counters.refused_pending == 1
                # One starts its call: its place is free again.
                call = SimulatedCall(tracks=("inbound",))
                first.send(frame(TEXT, call.connected().encode()))
                first.send(frame(TEXT, call.start().encode()))
                await until(lambda: counters.calls == 1)
                assert pending() == MAX_PENDING - 1
                async with RawPeer.connected(proxy.port) as fourth:
                    fourth.send(upgrade_request("/twilio"))
                    assert await fourth.status() == 101
                    assert await status_of_one_more(proxy.port) == 503
                    # One leaves: its place is free again.
                    second.writer.transport.abort()
                    await until(lambda: pending() == MAX_PENDING - 1, within=5 * S)
                    assert await status_of_one_more(proxy.port) == 101
            assert counters.refused_pending == 2


async def test_a_pending_stream_holds_no_handshake_headers_nor_keepalive_until_its_start() -> None:
    """Issue 11: until `start`, a stream holds a few KB. Its handshake's headers (3 KB)
    are dropped once its handler runs, and its keepalive timer (0.6 KB) waits for `start`
    (the start timeout ends a stream that never starts long before a first ping)."""
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with proxy_closing_slowly(deepgram.url) as proxy:
            call = SimulatedCall(tracks=("inbound",))
            async with RawPeer.connected(proxy.port) as peer:
                peer.send(upgrade_request("/twilio"))
                assert await peer.status() == 101
                await until(lambda: len(proxy.listening.connections) == 1)
                [ws] = proxy.listening.connections
                assert isinstance(ws, GuardedConnection)
                request, response = ws.request, ws.response
                assert request is not None and response is not None
                await until(lambda: len(request.headers) == 0 == len(response.headers))
                assert request.path == "/twilio" and response.status_code == 101
                assert ws._keepalive_due is None and ws.keepalive_task is None
                assert proxy.server.health()["pending"] == 1
                peer.send(frame(TEXT, call.connected().encode()))
                peer.send(frame(TEXT, call.start().encode()))
                await until(lambda: proxy.server.hub.counters.calls == 1)
                assert proxy.server.health()["pending"] == 0
                assert ws._keepalive_due is not None


async def status_of_one_more(port: int) -> int:
    """The status of one more /twilio upgrade (that connection then aborted)."""
    async with RawPeer.connected(port) as peer:
        peer.send(upgrade_request("/twilio"))
        return await peer.status()


async def test_a_stream_may_send_only_small_messages_until_its_start() -> None:
    """Before `start` a /twilio message over 16 KiB is refused (1009); after it, the same
    message is taken (and, not being JSON, refused as such: 1008)."""
    big = b"x" * (20 << 10)
    async with FakeDeepgram(result_ms=100) as deepgram:
        async with running_proxy(deepgram.url) as proxy:
            codes = []
            for started in (False, True):
                call = SimulatedCall(tracks=("inbound",))
                async with RawPeer.connected(proxy.port) as peer:
                    peer.send(upgrade_request("/twilio"))
                    assert await peer.status() == 101
                    peer.send(frame(TEXT, call.connected().encode()))
                    if started:
                        peer.send(frame(TEXT, call.start().encode()))
                        await until(lambda: proxy.server.hub.counters.calls == 1)
                    peer.send(frame(TEXT, big))
                    codes.append((await peer.close_frame())[0])
    assert codes == [1009, 1008]
