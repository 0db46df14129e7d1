"""/twilio's messages are taken as they are parsed (`DirectConnection`), not through recv():
however they are framed or timed, the call is the same, and /client is untouched."""

from __future__ import annotations

import asyncio
import base64
import os

from websockets.asyncio.client import connect
from websockets.asyncio.messages import MAX_FRAGMENTS
from websockets.exceptions import ConnectionClosed
from websockets.frames import Frame, Opcode

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.fakes.twilio import SimulatedCall, pattern

from .helpers import RunningProxy, Watcher, results, until

N = 8000  # one second per track


def a_second_of_both_tracks(call: SimulatedCall) -> tuple[dict[str, bytes], list[str]]:
    audio = {"inbound": pattern("inbound", N), "outbound": pattern("outbound", N)}
    return audio, [m for _, m in call.frames(audio)]  # type: ignore[arg-type]


async def heard(deepgram: FakeDeepgram, audio: dict[str, bytes]) -> None:
    """Deepgram's one stream closes with exactly `audio`, both channels byte for byte."""
    await until(lambda: len(deepgram.streams) == 1)
    [stream] = deepgram.streams
    await asyncio.wait_for(stream.closed.wait(), 5)
    assert bytes(stream.audio[0::2]) == audio["inbound"]
    assert bytes(stream.audio[1::2]) == audio["outbound"]


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
    proxy: RunningProxy, pipelined: bytes = b""
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A /twilio connection over a plain socket, past the 101 response: for frames no
    WebSocket client library would send. `pipelined` goes out with the upgrade request."""
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /twilio HTTP/1.1\r\nHost: 127.0.0.1:{proxy.port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    writer.write(request + pipelined)
    await writer.drain()
    response = await reader.readuntil(b"\r\n\r\n")
    assert response.startswith(b"HTTP/1.1 101")
    return reader, writer


async def close_code_from(reader: asyncio.StreamReader) -> int:
    """The code of the close frame the proxy sends (unmasked, so at a fixed offset)."""
    closing = await asyncio.wait_for(reader.read(4), 5)
    assert closing[0] == 0x88
    return int.from_bytes(closing[2:4], "big")


async def test_messages_sent_with_the_upgrade_request_are_kept_in_order(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    """A peer may send frames before it has read the 101 response: the proxy parses them
    before the call's handler runs, holds them (pausing the socket past a few) and then
    delivers every one, in order."""
    call = SimulatedCall()
    audio, frames = a_second_of_both_tracks(call)
    messages = [call.connected(), call.start(), *frames, call.stop()]
    reader, writer = await raw_twilio(proxy, b"".join(masked(m) for m in messages))
    await heard(deepgram, audio)
    assert await close_code_from(reader) == 1000
    writer.close()


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
                await asyncio.wait_for(await ws.ping(), 2)
        await ws.send(call.stop())
    await heard(deepgram, audio)


async def test_clients_still_receive_with_recv(proxy: RunningProxy) -> None:
    """Only /twilio is direct: a /client connection reads its choice with recv() as ever."""
    async with connect(proxy.client_url, proxy=None) as ws:
        assert await ws.recv() == "[]"
        await ws.send("CAnope")
        await ws.wait_closed()
    assert ws.close_code == 1008
