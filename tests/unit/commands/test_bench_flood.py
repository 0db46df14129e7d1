"""The ping flooder's pure parts: its frames and handshake against websockets' own protocol,
its reading of what the server sends, and its result's JSON form."""

from __future__ import annotations

import pytest
from websockets.frames import Close, CloseCode, Frame, Opcode
from websockets.http11 import Request
from websockets.server import ServerProtocol
from websockets.streams import StreamReader

from twilio_dg_proxy.commands.bench.flood import (
    PING,
    FloodResult,
    ServerFrames,
    accept_key,
    upgrade_request,
    upgrade_status,
)

KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def test_the_ping_is_a_masked_empty_ping_frame() -> None:
    reader = StreamReader()
    reader.feed_data(PING * 2)
    parser = Frame.parse(reader.read_exact, mask=True)
    with pytest.raises(StopIteration) as stopped:
        next(parser)
    frame = stopped.value.value
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.PING, True, b"")


def test_the_accept_key_is_rfc_6455s_example() -> None:
    assert accept_key(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_websockets_accepts_the_upgrade_and_its_answer_reads_as_101() -> None:
    server = ServerProtocol()
    server.receive_data(upgrade_request(8080, "/client", KEY))
    [request] = server.events_received()
    assert isinstance(request, Request) and request.path == "/client"
    server.send_response(server.accept(request))
    head = b"".join(server.data_to_send()).partition(b"\r\n\r\n")[0]
    assert upgrade_status(head, KEY) == 101
    assert upgrade_status(head, "AAAAAAAAAAAAAAAAAAAAAA==") == 0  # accepts another key


def test_a_refusal_reads_as_its_status_and_garbage_as_zero() -> None:
    assert upgrade_status(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0", KEY) == 503
    assert upgrade_status(b"SSH-2.0-OpenSSH", KEY) == 0


def _server_frames() -> bytes:
    frames = [Frame(Opcode.PONG, b"")] * 3 + [Frame(Opcode.TEXT, b"x" * 300)]
    frames += [Frame(Opcode.PONG, b"")] * 2 + [Frame(Opcode.PONG, b"ab")]
    frames += [Frame(Opcode.CLOSE, Close(CloseCode.POLICY_VIOLATION, "too many").serialize())]
    frames += [Frame(Opcode.PONG, b"")]  # after the close: not counted
    return b"".join(f.serialize(mask=False) for f in frames)


@pytest.mark.parametrize("cut", [1, 2, 3, 7, 1000])
def test_server_frames_count_pongs_and_find_the_close_code_across_reads(cut: int) -> None:
    data = _server_frames()
    frames = ServerFrames()
    for start in range(0, len(data), cut):
        frames.feed(data[start : start + cut])
    assert (frames.pongs, frames.close_code) == (6, 1008)


def test_a_close_frame_without_a_code_reads_as_1005() -> None:
    frames = ServerFrames()
    frames.feed(Frame(Opcode.CLOSE, b"").serialize(mask=False))
    assert frames.close_code == 1005


def test_the_result_survives_its_json_form() -> None:
    result = FloodResult(flooders=4, seconds=2.0, pings_sent=10, connections=3)
    result.closes = {1008: 2}
    result.drops = 1
    assert FloodResult.from_json(result.to_json()) == result
    assert result.closed_by_proxy == 3
