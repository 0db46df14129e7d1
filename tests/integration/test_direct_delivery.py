"""/twilio's messages are taken as they are parsed (`DirectConnection`), not through recv():
however they are framed or timed, the call is the same, and /client is untouched. Every
test of what a peer sees also runs with DIRECT_RECEIVE off (websockets' recv()): the two
paths must not differ."""

from __future__ import annotations

import asyncio
import base64
import gc
import os
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode
from websockets.protocol import State

from twilio_dg_proxy.direct_connection import (
    MAX_FRAGMENTS,
    DirectClientConnection,
    DirectConnection,
    Guard,
    GuardedConnection,
)
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .helpers import RunningProxy, Watcher, both_receive_modes, results, until
from .raw_peer import PING, PONG, RawPeer, frame, upgrade_request

# websockets' default, which the proxy keeps: how long it waits for a peer's close frame
# before it drops the connection.
CLOSE_TIMEOUT_S = 10.0

N = 8000  # one second per track


def a_second_of_both_tracks(call: SimulatedCall) -> tuple[dict[str, bytes], list[str]]:
    audio = {"inbound": pattern("inbound", N), "outbound": pattern("outbound", N)}
    return audio, [m for _, m in call.frames(audio)]  # type: ignore[arg-type]


async def heard(deepgram: FakeDeepgram, audio: dict[str, bytes]) -> None:
    """Deepgram's one stream closes with exactly `audio`, both channels byte for byte."""
    await until(lambda: len(deepgram.streams) == 1)
    [stream] = deepgram.streams
    await asyncio.wait_for(stream.closed.wait(), 5 * S)
    assert bytes(stream.audio[0::2]) == audio["inbound"]
    assert bytes(stream.audio[1::2]) == audio["outbound"]


@both_receive_modes
async def test_fragmented_messages_are_reassembled(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio, frames = a_second_of_both_tracks(call)
    async with connect(proxy.twilio_url, proxy=None) as ws:
        watcher = None
        for i, message in enumerate([call.connected(), call.start(), *frames]):
            # RFC 6455 lets a peer cut any message into fragments: 1, 2 or 7 here.
            pieces = 1 + i % 3 * 3
            step = -(-len(message) // pieces)
            await ws.send([message[k : k + step] for k in range(0, len(message), step)])
            if i == 1:
                await until(lambda: call.call_sid in proxy.server.hub.active_calls())
                watcher = await Watcher.join(proxy, call.call_sid)
        assert watcher is not None
        await ws.send([call.stop()[:5], call.stop()[5:]])
    assert ws.close_code == 1000
    await heard(deepgram, audio)
    assert len(results(await watcher.transcript())) >= 2


@both_receive_modes
async def test_a_message_in_too_many_fragments_is_refused(proxy: RunningProxy) -> None:
    call = SimulatedCall()
    async with connect(proxy.twilio_url, proxy=None) as ws:
        await ws.send(call.connected())
        await ws.send(call.start())
        message = call.connected()
        try:
            await ws.send(message[i % len(message)] for i in range(MAX_FRAGMENTS + 1))
        except ConnectionClosed:
            pass
        await ws.wait_closed()
    assert ws.close_code == 1009 and ws.close_reason == "too many fragments"


def masked(text: str) -> bytes:
    return Frame(Opcode.TEXT, text.encode()).serialize(mask=True, extensions=[])


async def raw_twilio(
    proxy: RunningProxy, pipelined: bytes = b"", *, then: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A /twilio connection over a plain socket, past the 101 response: for frames no
    WebSocket client library would send. `pipelined` goes out in the upgrade request's
    write, `then` in a write of its own right after it, both before reading the response."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request + pipelined)
    await writer.drain()
    if then:
        writer.write(then)
        await writer.drain()
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101")
    return reader, writer


async def close_code_from(reader: asyncio.StreamReader) -> int:
    """The code of the close frame the proxy sends (unmasked, so at a fixed offset)."""
    closing = await asyncio.wait_for(reader.read(4), 5 * S)
    assert closing[0] == 0x88
    return int.from_bytes(closing[2:4], "big")


@both_receive_modes
@pytest.mark.parametrize("when", ["with the request", "right after it"])
async def test_messages_sent_before_the_101_response_are_kept_in_order(
    proxy: RunningProxy, deepgram: FakeDeepgram, when: str
) -> None:
    """A peer may send frames before it has read the 101 response, in the request's read
    (websockets parses them) or in a later one (the splitter does, while the handshake is
    not done): the proxy holds them until the call's handler attaches (pausing the socket
    past a few), then delivers every one, in order."""
    call = SimulatedCall()
    audio, frames = a_second_of_both_tracks(call)
    stream = b"".join(masked(m) for m in [call.connected(), call.start(), *frames, call.stop()])
    if when == "with the request":
        reader, writer = await raw_twilio(proxy, stream)
    else:
        reader, writer = await raw_twilio(proxy, b"", then=stream)
    await heard(deepgram, audio)
    assert await close_code_from(reader) == 1000
    writer.close()


@both_receive_modes
async def test_a_frame_breaking_the_protocol_ends_the_call_with_1002_and_nothing_after_it(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio, frames = a_second_of_both_tracks(call)
    half = len(frames) // 2
    reader, writer = await raw_twilio(proxy)
    writer.write(b"".join(masked(m) for m in [call.connected(), call.start(), *frames[:half]]))
    unmasked = Frame(Opcode.TEXT, frames[half].encode()).serialize(mask=False, extensions=[])
    # In one write with the rest, as a read may hold both: what follows must not be taken.
    writer.write(unmasked + b"".join(masked(m) for m in frames[half + 1 :]))
    await writer.drain()
    assert await close_code_from(reader) == 1002
    writer.close()
    sent = half // 2 * 160  # bytes per track before the bad frame
    await heard(deepgram, {track: data[:sent] for track, data in audio.items()})


def zero_masked(payload: bytes) -> bytes:
    """A masked text frame whose mask is zero: its payload is on the wire as it is."""
    assert len(payload) < 126
    return bytes([0x81, 0x80 | len(payload)]) + bytes(4) + payload


def close_frame(code: int) -> bytes:
    return Frame(Opcode.CLOSE, code.to_bytes(2, "big")).serialize(mask=True, extensions=[])


@both_receive_modes
async def test_a_frame_cut_by_the_proxys_own_close_is_read_whole_after_it(
    proxy: RunningProxy,
) -> None:
    """The proxy closes (bad input) while the start of the next frame is all it has read:
    the rest of that frame, then the peer's close frame, must still be read as such, and the
    closing handshake end at once (not at close_timeout)."""
    # The control: a peer that never answers the proxy's close, failed first, so the proxy
    # drops it at its close_timeout. Had the close frame below not been read as one, this
    # connection would be dropped the same way, only later.
    control, control_writer = await raw_twilio(proxy)
    control_call = SimulatedCall()
    control_writer.write(
        b"".join(masked(m) for m in [control_call.connected(), control_call.start(), "{not"])
    )
    assert await close_code_from(control) == 1008
    control_dropped = asyncio.create_task(control.read())  # returns at the end of stream

    call = SimulatedCall()
    # Read as a frame header, this payload would announce 65,535 bytes to wait for.
    cut = zero_masked(b"\x82\xfe\xff\xff\x00\x00\x00\x00" + b"x" * 40)
    reader, writer = await raw_twilio(proxy)
    writer.write(b"".join(masked(m) for m in [call.connected(), call.start(), "{not json"]))
    writer.write(cut[:6])
    await writer.drain()
    assert await close_code_from(reader) == 1008
    writer.write(cut[6:] + close_frame(1000))
    await writer.drain()
    # Bounded past the close_timeout, so that a handshake left to it fails the assertion
    # below, which says why, rather than this timeout.
    async with asyncio.timeout(CLOSE_TIMEOUT_S + 5 * S):
        while await reader.read(1024):  # the rest of the close frame, then end of stream
            pass
    assert not control_dropped.done(), "the close frame was not read: dropped at close_timeout"
    control_dropped.cancel()
    writer.close()
    control_writer.close()


@both_receive_modes
async def test_after_too_many_fragments_nothing_more_is_taken_and_a_silent_peer_is_cut_off(
    proxy: RunningProxy,
) -> None:
    call = SimulatedCall()
    hub = proxy.server.hub
    reader, writer = await raw_twilio(proxy)
    writer.write(b"".join(masked(m) for m in [call.connected(), call.start()]))
    await until(lambda: call.call_sid in hub.active_calls())
    fragments = [Frame(Opcode.TEXT, b"{", fin=False)]
    fragments += [Frame(Opcode.CONT, b" ", fin=False)] * (MAX_FRAGMENTS - 1)
    # In the same read: a last fragment that, taken alone, would be a message.
    fragments.append(Frame(Opcode.CONT, b'{"event": "after the limit"}'))
    writer.write(b"".join(f.serialize(mask=True, extensions=[]) for f in fragments))
    await writer.drain()
    assert await close_code_from(reader) == 1009
    # This peer never closes its side: the proxy cuts it off after its close_timeout.
    await until(lambda: not hub.active_calls(), within=CLOSE_TIMEOUT_S + 5 * S)
    assert hub.counters.unknown_events == 0  # the last fragment was not taken
    writer.close()


@both_receive_modes
async def test_pings_during_a_call_are_answered(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    call = SimulatedCall()
    audio, frames = a_second_of_both_tracks(call)
    async with connect(proxy.twilio_url, proxy=None, ping_interval=None) as ws:
        await ws.send(call.connected())
        await ws.send(call.start())
        for i, message in enumerate(frames):
            await ws.send(message)
            if i % 20 == 0:
                await asyncio.wait_for(await ws.ping(), 2 * S)
        await ws.send(call.stop())
    await heard(deepgram, audio)


async def test_clients_still_receive_with_recv(proxy: RunningProxy) -> None:
    """Only /twilio is direct: a /client connection reads its choice with recv() as ever."""
    async with connect(proxy.client_url, proxy=None) as ws:
        assert await ws.recv() == "[]"
        await ws.send("CAnope")
        await ws.wait_closed()
    assert ws.close_code == 1008


async def instance_keys(
    server_class: type[ServerConnection] | None, client_class: type[ClientConnection] | None
) -> tuple[set[str], set[str]]:
    """The instance-dict keys of an open server connection and of its client."""
    seen: list[set[str]] = []

    async def handler(ws: ServerConnection) -> None:
        seen.append(set(vars(ws)))
        await ws.wait_closed()

    options: dict[str, Any] = {"create_connection": server_class} if server_class else {}
    async with serve(handler, "127.0.0.1", 0, **options) as server:
        port = server.sockets[0].getsockname()[1]
        client_options: dict[str, Any] = {"proxy": None}
        if client_class:
            client_options["create_connection"] = client_class
        async with connect(f"ws://127.0.0.1:{port}/twilio", **client_options) as client:
            await until(lambda: bool(seen))
            return seen[0], set(vars(client))


async def test_a_connections_own_state_stays_out_of_its_instance_dict() -> None:
    """Memory per connection: websockets' own attributes fit CPython's key-sharing instance
    dict (at most 29 keys), ours with them did not (a full dict per connection, 1.3 KB
    more for each pending /twilio stream), so ours are slots."""
    plain = await instance_keys(None, None)
    guard = Guard(10.0, 50, 1 << 20, lambda ws, limit: None, lambda ws: None)
    for server_class in (
        DirectConnection.configured(direct_paths=frozenset({"/twilio"}), guard=guard),
        GuardedConnection.configured(guard=guard),
    ):
        ours = await instance_keys(server_class, DirectClientConnection)
        assert ours[0] <= plain[0], ours[0] - plain[0]
        assert ours[1] <= plain[1], ours[1] - plain[1]


@asynccontextmanager
async def guarded_server(
    ping_interval: float, **options: Any
) -> AsyncIterator[tuple[Server, list[bool]]]:
    """A websockets server of `GuardedConnection`s, and for each connection its handler
    saw, whether a keepalive task was running when the handler began."""
    tasks: list[bool] = []

    async def handler(ws: ServerConnection) -> None:
        tasks.append(ws.keepalive_task is not None)
        await ws.wait_closed()

    guard = Guard(10.0, 50, 1 << 20, lambda ws, limit: None, lambda ws: None)
    connection = GuardedConnection.configured(guard=guard)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=connection,
        ping_interval=ping_interval,
        **options,
    ) as server:
        yield server, tasks


async def test_keepalive_starts_after_a_ping_interval_and_then_pings() -> None:
    """No keepalive task at the handshake (a task, its coroutine and its sleep were 1.7 KB
    of each pending /twilio stream, which ends before any ping): a timer starts it."""
    async with guarded_server(ping_interval=0.05 * S) as (server, tasks):
        async with RawPeer.connected(server.sockets[0].getsockname()[1]) as peer:
            peer.send(upgrade_request("/"))
            assert await peer.status() == 101
            async with asyncio.timeout(5 * S):
                opcode, _ = await peer.frame()
    assert tasks == [False]
    assert opcode == PING


async def test_keepalive_pings_again_after_each_pong_from_a_timer_not_a_task() -> None:
    """websockets' keepalive, driven by a timer (a task, its coroutine and its sleep were
    2 KB per connection): a ping every ping_interval while the pongs come."""
    async with guarded_server(ping_interval=0.05 * S, ping_timeout=5 * S) as (server, tasks):
        async with RawPeer.connected(server.sockets[0].getsockname()[1]) as peer:
            peer.send(upgrade_request("/"))
            assert await peer.status() == 101
            payloads = []
            async with asyncio.timeout(5 * S):
                for _ in range(3):
                    opcode, payload = await peer.frame()
                    assert opcode == PING
                    payloads.append(payload)
                    peer.send(frame(PONG, payload))
            [ws] = server.connections
            assert ws.keepalive_task is None and ws.state is State.OPEN
    assert len(set(payloads)) == 3 and tasks == [False]


async def test_a_ping_unanswered_within_ping_timeout_fails_the_connection_with_1011() -> None:
    """As websockets' keepalive: 1011 "keepalive ping timeout", and the connection dropped
    once close_timeout has passed without the peer's close."""
    options = {"ping_timeout": 0.05 * S, "close_timeout": 0.2 * S}
    async with guarded_server(ping_interval=0.05 * S, **options) as (server, tasks):
        async with RawPeer.connected(server.sockets[0].getsockname()[1]) as peer:
            peer.send(upgrade_request("/"))
            assert await peer.status() == 101
            assert (await peer.frame())[0] == PING
            assert await peer.close_frame() == (1011, "keepalive ping timeout")
            assert await peer.end_of_stream(within=5 * S) == b""


async def test_a_connection_that_ends_before_its_keepalive_is_not_held_by_the_timer() -> None:
    async with guarded_server(ping_interval=600 * S) as (server, tasks):
        async with RawPeer.connected(server.sockets[0].getsockname()[1]) as peer:
            peer.send(upgrade_request("/"))
            assert await peer.status() == 101
            await until(lambda: len(server.connections) == 1)
            [ws] = server.connections
            gone = weakref.ref(ws)
            del ws
        await until(lambda: not server.connections)
        gc.collect()
        assert gone() is None
    assert tasks == [False]


async def test_a_direct_connection_keeps_no_recv_queue_and_recv_says_why() -> None:
    """Its messages go to its sink: websockets' queue for recv() (1 KB per connection) is
    not kept, and recv() says so rather than waiting for ever."""
    guard = Guard(10.0, 50, 1 << 20, lambda ws, limit: None, lambda ws: None)
    direct = DirectConnection.configured(direct_paths=frozenset({"/twilio"}), guard=guard)
    errors: list[BaseException] = []

    async def handler(ws: ServerConnection) -> None:
        try:
            await ws.recv()
        except RuntimeError as exc:
            errors.append(exc)

    async with serve(handler, "127.0.0.1", 0, create_connection=direct) as server:
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}/twilio", proxy=None) as client:
            await client.wait_closed()
    assert len(errors) == 1 and "sink" in str(errors[0])
    assert client.close_code == 1000  # the handler returned: websockets closed as always


async def test_a_held_keepalive_starts_when_released() -> None:
    """A pending /twilio stream's keepalive is held until its `start` (a timer is 0.6 KB):
    nothing is scheduled until `release_keepalive`, then pings come as usual."""
    scheduled: list[bool] = []
    released = asyncio.Event()

    def hold(ws: ServerConnection, request: object) -> None:
        assert isinstance(ws, GuardedConnection)
        ws.hold_keepalive()

    async def handler(ws: ServerConnection) -> None:
        assert isinstance(ws, GuardedConnection)
        scheduled.append(ws._keepalive_due is not None or ws.keepalive_task is not None)
        ws.start_keepalive()  # as websockets did: still held
        scheduled.append(ws._keepalive_due is not None)
        ws.release_keepalive()
        scheduled.append(ws._keepalive_due is not None)
        released.set()
        await ws.wait_closed()

    guard = Guard(10.0, 50, 1 << 20, lambda ws, limit: None, lambda ws: None)
    async with serve(
        handler,
        "127.0.0.1",
        0,
        create_connection=GuardedConnection.configured(guard=guard),
        process_request=hold,
        ping_interval=0.05 * S,
    ) as server:
        async with RawPeer.connected(server.sockets[0].getsockname()[1]) as peer:
            peer.send(upgrade_request("/"))
            assert await peer.status() == 101
            await asyncio.wait_for(released.wait(), 5 * S)
            async with asyncio.timeout(5 * S):
                opcode, _ = await peer.frame()
    assert scheduled == [False, False, True]
    assert opcode == PING
