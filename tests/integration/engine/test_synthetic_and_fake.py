"""The fake Deepgram over real loopback sockets, with a real websockets client."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from twilio_dg_proxy.engine.synthetic import SyntheticTranscriber, audio_digest
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram, next_deadline

from ...timing import MS, S

STEREO = "?encoding=mulaw&sample_rate=8000&channels=2&multichannel=true"
MONO = "?encoding=mulaw&sample_rate=8000&channels=1"
SILENCE = b"\xff"
# With the default result_ms=250: 2000 sample frames per window, 4000 bytes of stereo.
WINDOW_FRAMES = 2000
# Generous bound on any single wait, so a broken fake fails fast instead of hanging.
RECV_TIMEOUT_S = 2 * S


def speech(frames: int, seed: int = 0) -> bytes:
    """Return mono mu-law that is never silence and differs with `seed`."""
    return bytes((seed + i) % 0x7F for i in range(frames))


def interleave(left: bytes, right: bytes) -> bytes:
    """Return stereo mu-law: byte L, byte R, ..."""
    out = bytearray(len(left) * 2)
    out[0::2] = left
    out[1::2] = right
    return bytes(out)


def chunks(audio: bytes, size: int = 320) -> list[bytes]:
    """Cut audio into 20 ms stereo messages, as the proxy sends them."""
    return [audio[i : i + size] for i in range(0, len(audio), size)]


async def send_audio(ws: ClientConnection, audio: bytes) -> None:
    for chunk in chunks(audio):
        await ws.send(chunk)


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(RECV_TIMEOUT_S):
        message = await ws.recv()
    assert isinstance(message, str)
    decoded: dict[str, Any] = json.loads(message)
    return decoded


async def recv_until_closed(ws: ClientConnection) -> list[dict[str, Any]]:
    """Return every message until the server closes the connection."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(RECV_TIMEOUT_S):
        try:
            while True:
                message = await ws.recv()
                assert isinstance(message, str)
                messages.append(json.loads(message))
        except ConnectionClosed:
            return messages


def transcript(message: dict[str, Any]) -> str:
    text: str = message["channel"]["alternatives"][0]["transcript"]
    return text


async def test_each_window_gives_one_final_per_channel_with_channel_index_and_times() -> None:
    left0, left1 = speech(WINDOW_FRAMES, 1), speech(WINDOW_FRAMES, 2)
    right0, right1 = SILENCE * WINDOW_FRAMES, speech(WINDOW_FRAMES, 3)
    async with FakeDeepgram() as fake, connect(fake.url + STEREO, proxy=None) as ws:
        await send_audio(ws, interleave(left0, right0) + interleave(left1, right1))
        results = [await recv_json(ws) for _ in range(4)]
        stream = await fake.next_stream()

    assert [r["channel_index"] for r in results] == [[0, 2], [1, 2], [0, 2], [1, 2]]
    assert [r["start"] for r in results] == [0.0, 0.0, 0.25, 0.25]
    assert all(r["duration"] == 0.25 for r in results)
    assert all(r["type"] == "Results" and r["is_final"] for r in results)
    assert not any(r["from_finalize"] for r in results)
    assert [transcript(r) for r in results] == [
        f"ch0 w0 {audio_digest(left0)}",
        "",
        f"ch0 w1 {audio_digest(left1)}",
        f"ch1 w1 {audio_digest(right1)}",
    ]
    words = results[0]["channel"]["alternatives"][0]["words"]
    assert [w["word"] for w in words] == transcript(results[0]).split()
    assert words[0]["start"] == 0.0 and words[-1]["end"] == pytest.approx(0.25)
    assert results[1]["channel"]["alternatives"][0]["words"] == []
    assert results[0]["metadata"]["request_id"] == stream.request_id
    assert results[0]["metadata"]["model_info"] == {"name": "fake", "version": "0", "arch": "fake"}
    assert [r["fake"]["seq"] for r in results] == [0, 1, 2, 3]
    assert stream.audio == interleave(left0, right0) + interleave(left1, right1)
    assert stream.audio_log[-1][1] == 4 * WINDOW_FRAMES
    assert [json.loads(text) for text in stream.sent] == results


async def test_results_carry_a_monotonic_send_time_for_latency_measurements() -> None:
    async with FakeDeepgram() as fake, connect(fake.url + MONO, proxy=None) as ws:
        # An order of clock readings (no bound on how long it takes): the stamp is taken on
        # this machine's monotonic clock, between sending the audio and reading the result.
        before = time.monotonic()
        await send_audio(ws, speech(WINDOW_FRAMES))
        result = await recv_json(ws)
        assert before <= result["fake"]["sent_at"] <= time.monotonic()


async def test_upgrade_response_carries_the_streams_request_id() -> None:
    async with FakeDeepgram() as fake, connect(fake.url + MONO, proxy=None) as ws:
        stream = await fake.next_stream()
        assert ws.response is not None
        assert ws.response.headers["dg-request-id"] == stream.request_id
        assert stream.params == {"encoding": "mulaw", "sample_rate": "8000", "channels": "1"}
        assert stream.channels == 1


async def test_interim_results_come_at_half_window_only_when_asked() -> None:
    audio = interleave(speech(WINDOW_FRAMES), SILENCE * WINDOW_FRAMES)
    async with FakeDeepgram() as fake:
        async with connect(fake.url + STEREO + "&interim_results=true", proxy=None) as ws:
            await send_audio(ws, audio)
            with_interims = [await recv_json(ws) for _ in range(4)]
        async with connect(fake.url + STEREO, proxy=None) as ws:
            await send_audio(ws, audio + audio)
            without = [await recv_json(ws) for _ in range(4)]

    assert [(r["is_final"], r["channel_index"][0]) for r in with_interims] == [
        (False, 0),
        (False, 1),
        (True, 0),
        (True, 1),
    ]
    assert with_interims[0]["duration"] == 0.125 and with_interims[0]["start"] == 0.0
    assert transcript(with_interims[0]) != transcript(with_interims[2])
    assert all(r["is_final"] for r in without)


async def test_finalize_flushes_the_partial_window_as_from_finalize_finals() -> None:
    async with FakeDeepgram() as fake, connect(fake.url + STEREO, proxy=None) as ws:
        await send_audio(ws, interleave(speech(800), speech(800, 5)))  # 100 ms
        await ws.send(json.dumps({"type": "Finalize"}))
        flushed = [await recv_json(ws) for _ in range(2)]
        await send_audio(ws, interleave(speech(WINDOW_FRAMES), speech(WINDOW_FRAMES)))
        following = [await recv_json(ws) for _ in range(2)]
        stream = await fake.next_stream()

    assert all(r["is_final"] and r["from_finalize"] for r in flushed)
    assert [(r["start"], r["duration"]) for r in flushed] == [(0.0, 0.1), (0.0, 0.1)]
    assert [r["start"] for r in following] == [0.1, 0.1]
    assert not any(r["from_finalize"] for r in following)
    assert stream.controls == ["Finalize"]


async def test_close_stream_sends_remaining_finals_then_metadata_then_closes_1000() -> None:
    audio = interleave(speech(WINDOW_FRAMES + 400), speech(WINDOW_FRAMES + 400, 9))  # 300 ms
    async with FakeDeepgram() as fake, connect(fake.url + STEREO, proxy=None) as ws:
        await send_audio(ws, audio)
        await ws.send(json.dumps({"type": "CloseStream"}))
        messages = await recv_until_closed(ws)
        assert ws.close_code == 1000
        stream = await fake.next_stream()
        await stream.closed.wait()

    results, metadata = messages[:-1], messages[-1]
    assert [(r["start"], r["duration"]) for r in results] == [(0.0, 0.25)] * 2 + [(0.25, 0.05)] * 2
    assert all(r["is_final"] and not r["from_finalize"] for r in results)
    assert metadata["type"] == "Metadata"
    assert metadata["request_id"] == stream.request_id
    assert metadata["channels"] == 2
    assert metadata["duration"] == pytest.approx(0.3)
    assert metadata["created"].endswith("Z")
    assert stream.controls == ["CloseStream"]
    assert (stream.close_code, stream.close_reason) == (1000, "")


async def test_a_stream_without_traffic_closes_with_1011_net0001() -> None:
    async with FakeDeepgram(idle_timeout_s=0.3) as fake, connect(fake.url + MONO, proxy=None) as ws:
        await ws.send(speech(160))
        assert await recv_until_closed(ws) == []
        assert ws.close_code == 1011
        assert ws.close_reason is not None and ws.close_reason.startswith("NET-0001")
        stream = await fake.next_stream()
        await stream.closed.wait()
        assert stream.close_code == 1011 and stream.close_reason.startswith("NET-0001")


async def test_keepalive_is_recorded_and_holds_a_stream_that_received_audio() -> None:
    # A KeepAlive every third of the idle timeout, over twice that timeout: both scale, so a
    # busy machine has more room between two KeepAlives before the fake's deadline.
    idle = 0.3 * S
    async with (
        FakeDeepgram(idle_timeout_s=idle) as fake,
        connect(fake.url + MONO, proxy=None) as ws,
    ):
        await ws.send(speech(160))
        for _ in range(6):
            await asyncio.sleep(idle / 3)
            await ws.send(json.dumps({"type": "KeepAlive"}))
        # A Finalize answer proves the fake has read everything sent before it.
        await ws.send(speech(160))
        await ws.send(json.dumps({"type": "Finalize"}))
        assert (await recv_json(ws))["from_finalize"]
        stream = await fake.next_stream()
        assert not stream.closed.is_set()
        assert stream.controls == ["KeepAlive"] * 6 + ["Finalize"]
        # Once the KeepAlives stop, the idle rule applies again.
        await recv_until_closed(ws)
        assert ws.close_code == 1011


async def test_keepalive_alone_does_not_hold_a_stream_that_never_received_audio() -> None:
    async with FakeDeepgram(idle_timeout_s=0.3) as fake, connect(fake.url + MONO, proxy=None) as ws:
        stream = await fake.next_stream()
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(RECV_TIMEOUT_S):
                while True:
                    await ws.send(json.dumps({"type": "KeepAlive"}))
                    await asyncio.sleep(50 * MS)
        await stream.closed.wait()
    assert "KeepAlive" in stream.controls
    assert stream.close_code == 1011 and stream.close_reason.startswith("NET-0001")
    assert stream.closed.is_set() and stream.audio_bytes == 0


async def test_drop_after_s_closes_a_busy_stream_with_1011_net0000() -> None:
    async with FakeDeepgram(drop_after_s=0.2) as fake, connect(fake.url + MONO, proxy=None) as ws:
        with pytest.raises(ConnectionClosed) as caught:
            async with asyncio.timeout(RECV_TIMEOUT_S):
                while True:
                    await ws.send(speech(160))
                    await asyncio.sleep(20 * MS)
        assert caught.value.rcvd is not None
        assert (caught.value.rcvd.code, caught.value.rcvd.reason) == (1011, "NET-0000 fake drop")
        stream = await fake.next_stream()
        await stream.closed.wait()
        assert stream.close_code == 1011 and stream.audio_bytes > 0


async def test_an_empty_binary_frame_is_recorded_and_closes_1011() -> None:
    async with FakeDeepgram() as fake, connect(fake.url + MONO, proxy=None) as ws:
        await ws.send(b"")
        await recv_until_closed(ws)
        assert (ws.close_code, ws.close_reason) == (1011, "empty binary frame")
        stream = await fake.next_stream()
        await stream.closed.wait()
        assert stream.empty_frames == 1


async def test_a_text_that_is_not_a_control_message_closes_1008_data0000() -> None:
    async with FakeDeepgram() as fake, connect(fake.url + MONO, proxy=None) as ws:
        await ws.send('{"type": "Hello"}')
        await recv_until_closed(ws)
        assert ws.close_code == 1008
        assert ws.close_reason is not None and ws.close_reason.startswith("DATA-0000")
        stream = await fake.next_stream()
        assert stream.invalid_texts == ['{"type": "Hello"}'] and stream.controls == []


async def test_a_bad_key_is_refused_with_401_and_deepgram_headers() -> None:
    async with FakeDeepgram(api_key="secret") as fake:
        for headers in ({"Authorization": "Token wrong"}, {}, {"Authorization": "Bearer secret"}):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(fake.url + MONO, additional_headers=headers, proxy=None):
                    pass
            response = caught.value.response
            assert response.status_code == 401
            assert response.headers["dg-error"] == "Invalid credentials."
            assert response.headers["dg-request-id"]
            assert json.loads(response.body)["err_msg"] == "Invalid credentials."
        good = {"Authorization": "Token secret"}
        async with connect(fake.url + MONO, additional_headers=good, proxy=None):
            stream = await fake.next_stream()
        assert stream.headers["Authorization"] == "Token secret"
        assert [r.status for r in fake.refusals] == [401, 401, 401]


@pytest.mark.parametrize(
    "query",
    [
        "?encoding=linear16&sample_rate=8000&channels=1",
        "?encoding=mulaw&sample_rate=16000&channels=1",
        "?encoding=mulaw&sample_rate=8000",
        "?encoding=mulaw&sample_rate=8000&channels=3&multichannel=true",
        "?encoding=mulaw&sample_rate=8000&channels=2",
    ],
)
async def test_a_query_for_other_audio_is_refused_with_400(query: str) -> None:
    async with FakeDeepgram() as fake:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(fake.url + query, proxy=None):
                pass
        response = caught.value.response
        assert response.status_code == 400
        assert response.headers["dg-error"].startswith("Bad Request: ")
        assert fake.streams == []


async def test_another_path_is_refused_with_404() -> None:
    async with FakeDeepgram() as fake:
        with pytest.raises(InvalidStatus) as caught:
            async with connect(f"ws://127.0.0.1:{fake.port}/v2/listen{MONO}", proxy=None):
                pass
        assert caught.value.response.status_code == 404


async def test_reject_status_refuses_every_upgrade_with_that_status() -> None:
    async with FakeDeepgram(reject_status=429) as fake:
        for _ in range(2):
            with pytest.raises(InvalidStatus) as caught:
                async with connect(fake.url + STEREO, proxy=None):
                    pass
            assert caught.value.response.status_code == 429
            assert caught.value.response.headers["dg-error"].startswith("Too Many Requests")
        assert [r.status for r in fake.refusals] == [429, 429] and fake.streams == []


async def test_closing_the_fake_closes_every_stream() -> None:
    async with FakeDeepgram() as fake:
        clients = [await connect(fake.url + MONO, proxy=None) for _ in range(2)]
        streams = [await fake.next_stream(), await fake.next_stream()]
    assert all(s.closed.is_set() and s.close_code == 1001 for s in streams)
    for ws in clients:
        await ws.wait_closed()
        assert ws.close_code == 1001


async def test_next_stream_returns_streams_in_order_then_times_out() -> None:
    async with FakeDeepgram() as fake:
        async with connect(fake.url + MONO, proxy=None), connect(fake.url + STEREO, proxy=None):
            first, second = await fake.next_stream(), await fake.next_stream()
            assert fake.streams == [first, second]
            with pytest.raises(TimeoutError):
                await fake.next_stream(timeout=0.05)


def test_speech_final_ends_each_utterance_once() -> None:
    transcriber = SyntheticTranscriber(
        channels=1, result_ms=10, interim_results=False, request_id="r"
    )
    talk, quiet = speech(80), SILENCE * 80
    windows = [talk, quiet, quiet, talk, talk, talk, talk, quiet]
    finals = [m for w in windows for m in transcriber.feed(w)]
    # Window 1 ends the first utterance; window 3 is speech_final on the every-4th rule; windows
    # 4-6 open a new utterance that window 7 (every-4th, but silent) closes.
    assert [m["speech_final"] for m in finals] == [
        False,
        True,
        False,
        True,
        False,
        False,
        False,
        True,
    ]


def test_idle_deadline_runs_from_opening_until_audio_arrives() -> None:
    never_fed = next_deadline(
        opened_at=0.0, last_activity=8.0, got_audio=False, idle_timeout_s=10.0, drop_after_s=None
    )
    fed = next_deadline(
        opened_at=0.0, last_activity=8.0, got_audio=True, idle_timeout_s=10.0, drop_after_s=None
    )
    dropped = next_deadline(
        opened_at=0.0, last_activity=8.0, got_audio=True, idle_timeout_s=10.0, drop_after_s=3.0
    )
    assert never_fed[0] == 10.0 and never_fed[1].startswith("NET-0001")
    assert fed[0] == 18.0 and fed[1].startswith("NET-0001")
    assert dropped == (3.0, "NET-0000 fake drop")
