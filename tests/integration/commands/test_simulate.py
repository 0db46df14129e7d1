"""The simulator over loopback: against a real proxy and the fake Deepgram, against a server that
records what it receives (checked message by message with the proxy's Twilio parser), and as
the `simulate` command in a subprocess."""

from __future__ import annotations

import array
import asyncio
import io
import json
import math
import os
import re
import socket
import sys
import wave
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from twilio_dg_proxy.audio import mulaw_encode, read_tracks, sample_call
from twilio_dg_proxy.commands.simulate import (
    SimulateOptions,
    SimulationResult,
    plan_call,
    simulate,
    stream_call,
)
from twilio_dg_proxy.engine.synthetic import SyntheticStream
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_events import (
    Connected,
    Media,
    Start,
    Stop,
    Track,
    TwilioStream,
)
from twilio_dg_proxy.twilio_simulator import FRAME_BYTES, SILENCE, SimulatedCall

from ...timing import S
from ..helpers import RunningProxy, TwilioPeer

RATE = 8000
SID = re.compile(r"[0-9a-f]{32}")


def tone(frequency: float, n: int, amplitude: int = 8000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * i / RATE)) for i in range(n)]


def write_wav(path: Path, *channels: list[int]) -> Path:
    """An 8 kHz 16-bit PCM WAV file, one list of samples per channel."""
    interleaved = array.array("h", [s for frame in zip(*channels, strict=True) for s in frame])
    with wave.open(str(path), "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(interleaved.tobytes())
    return path


def mulaw(samples: list[int]) -> bytes:
    """What the simulator must send for these samples (encoded here, not by the simulator)."""
    return mulaw_encode(array.array("h", samples).tobytes())


def on_timeline(data: bytes, lost: frozenset[int] = frozenset(), start_frame: int = 0) -> bytes:
    """One channel as the proxy must rebuild it: silence before `start_frame`, the track's
    frames (the last padded), silence where frames were lost; ends with the last frame sent."""
    frames = bytearray([SILENCE]) * (start_frame * FRAME_BYTES)
    frames += data[start_frame * FRAME_BYTES :]
    frames += bytes([SILENCE]) * (-len(frames) % FRAME_BYTES)
    for i in lost:
        frames[i * FRAME_BYTES : (i + 1) * FRAME_BYTES] = bytes([SILENCE]) * FRAME_BYTES
    end = len(frames) // FRAME_BYTES
    while end and end - 1 in lost:
        end -= 1
    return bytes(frames[: end * FRAME_BYTES])


def assert_channels(stream: SyntheticStream, expected: Sequence[bytes]) -> None:
    """The stream's interleaved audio is `expected`, one bytes per channel, the shorter ones
    padded with silence to the longest (the mixer pads a track that ended first)."""
    length = max(len(channel) for channel in expected)
    assert stream.channels == len(expected)
    assert len(stream.audio) == length * len(expected)
    for c, channel in enumerate(expected):
        received = bytes(stream.audio[c :: len(expected)])
        assert received == channel + bytes([SILENCE]) * (length - len(channel)), f"channel {c}"


async def run_simulate(
    url: str, path: Path, options: SimulateOptions
) -> tuple[SimulationResult, str, str]:
    out, err = io.StringIO(), io.StringIO()
    result = await simulate(url, read_tracks(path), options, stdout=out, stderr=err, tty=False)
    return result, out.getvalue(), err.getvalue()


async def closed_streams(deepgram: FakeDeepgram, n: int) -> list[SyntheticStream]:
    """The next `n` streams the fake accepted, once each has ended."""
    streams = [await deepgram.next_stream() for _ in range(n)]
    await asyncio.wait_for(asyncio.gather(*(s.closed.wait() for s in streams)), 10 * S)
    return streams


@pytest.fixture
def stereo(tmp_path: Path) -> tuple[Path, list[int], list[int]]:
    """A 1.3 s stereo file (not a whole number of 20 ms frames): two tones."""
    n = RATE + 2400 + 37
    left, right = tone(440, n), tone(1250, n, amplitude=3000)
    return write_wav(tmp_path / "call.wav", left, right), left, right


# --- against the proxy and the fake Deepgram -----------------------------------------------


async def test_deepgram_receives_the_files_audio_byte_for_byte_on_its_channels(
    proxy: RunningProxy, deepgram: FakeDeepgram, stereo: tuple[Path, list[int], list[int]]
) -> None:
    path, left, right = stereo
    result, out, err = await run_simulate(proxy.twilio_url, path, SimulateOptions(realtime=False))
    assert result.exit_status == 0, err
    (stream,) = await closed_streams(deepgram, 1)
    assert (stream.params["channels"], stream.params["multichannel"]) == ("2", "true")
    assert_channels(stream, [on_timeline(mulaw(left)), on_timeline(mulaw(right))])
    assert stream.controls[-1] == "CloseStream"
    assert out.split() == [result.plans[0].call_sid]
    assert "1 call: 1.3 / 1.3 s of audio" in err


async def test_a_mono_file_is_the_callers_channel_alone(
    proxy: RunningProxy, deepgram: FakeDeepgram, tmp_path: Path
) -> None:
    samples = tone(300, RATE // 2)
    path = write_wav(tmp_path / "mono.wav", samples)
    result, _, err = await run_simulate(proxy.twilio_url, path, SimulateOptions(realtime=False))
    assert result.exit_status == 0, err
    (stream,) = await closed_streams(deepgram, 1)
    assert stream.params["channels"] == "1"
    assert_channels(stream, [on_timeline(mulaw(samples))])


async def test_dropped_frames_become_silence_exactly_where_they_were_dropped(
    proxy: RunningProxy, deepgram: FakeDeepgram, stereo: tuple[Path, list[int], list[int]]
) -> None:
    path, left, right = stereo
    options = SimulateOptions(realtime=False, drop=0.15, seed=1234)
    result, _, err = await run_simulate(proxy.twilio_url, path, options)
    assert result.exit_status == 0, err
    lost = result.plans[0].lost
    assert lost["inbound"] and lost["outbound"]
    (stream,) = await closed_streams(deepgram, 1)
    assert_channels(
        stream,
        [on_timeline(mulaw(left), lost["inbound"]), on_timeline(mulaw(right), lost["outbound"])],
    )
    dropped = len(lost["inbound"]) + len(lost["outbound"])
    assert f"{dropped} frames dropped (seed 1234)" in err
    # The same seed drops the same frames.
    again, _, _ = await run_simulate(proxy.twilio_url, path, options)
    assert again.plans[0].lost == lost


async def test_a_late_callee_is_silence_on_the_right_until_the_outbound_track_starts(
    proxy: RunningProxy, deepgram: FakeDeepgram, stereo: tuple[Path, list[int], list[int]]
) -> None:
    path, left, right = stereo
    # One second: well past MAX_TRACK_LAG_MS, so the proxy pads the absent track meanwhile.
    options = SimulateOptions(realtime=False, outbound_delay_s=1.0)
    result, _, err = await run_simulate(proxy.twilio_url, path, options)
    assert result.exit_status == 0, err
    (stream,) = await closed_streams(deepgram, 1)
    late = on_timeline(mulaw(right), start_frame=50)
    assert late[: 50 * FRAME_BYTES] == bytes([SILENCE]) * 50 * FRAME_BYTES
    assert_channels(stream, [on_timeline(mulaw(left)), late])


async def test_n_calls_stream_concurrently_each_with_its_own_call_sid(
    proxy: RunningProxy, deepgram: FakeDeepgram, stereo: tuple[Path, list[int], list[int]]
) -> None:
    path, left, right = stereo
    opened = proxy.server.hub.counters.calls
    result, out, err = await run_simulate(
        proxy.twilio_url, path, SimulateOptions(realtime=False, calls=3)
    )
    assert result.exit_status == 0, err
    sids = out.split()
    assert sorted(sids) == sorted(plan.call_sid for plan in result.plans)
    assert len(set(sids)) == 3
    assert proxy.server.hub.counters.calls == opened + 3
    for stream in await closed_streams(deepgram, 3):
        assert_channels(stream, [on_timeline(mulaw(left)), on_timeline(mulaw(right))])
    assert "3 calls: 1.3 / 1.3 s of audio" in err and "3 of 3 ended" in err


# --- failures ---------------------------------------------------------------------------------


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A port that refuses TCP connections: bound, never listening (no race for the port)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


async def test_a_proxy_that_is_not_running_fails_with_a_clear_message(
    refusing_port: int, stereo: tuple[Path, list[int], list[int]]
) -> None:
    url = f"ws://127.0.0.1:{refusing_port}/twilio"
    result, out, err = await run_simulate(url, stereo[0], SimulateOptions(realtime=False))
    assert result.exit_status == 1
    assert out == ""
    assert err == f"simulate: cannot connect to {url}: Connection refused (is the proxy running?)\n"


async def test_an_upgrade_refused_by_the_proxy_fails_with_its_status(
    proxy: RunningProxy, stereo: tuple[Path, list[int], list[int]]
) -> None:
    url = f"ws://127.0.0.1:{proxy.port}/nowhere"
    result, _, err = await run_simulate(url, stereo[0], SimulateOptions(realtime=False))
    assert result.exit_status == 1
    assert (
        err == "simulate: the proxy refused the stream: HTTP 404 Not Found: Not found: /nowhere\n"
    )


async def test_a_stream_the_proxy_closes_abnormally_fails_with_its_close_code(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    # A second stream for a callSid that is already streaming is closed with 1008 at `start`.
    first = SimulatedCall()
    tracks: dict[Track, bytes] = {"inbound": b"\x01" * 1600}
    async with TwilioPeer.started(proxy, first) as twilio:
        plan = plan_call(tracks, call=SimulatedCall(call_sid=first.call_sid, tracks=("inbound",)))
        error = await stream_call(proxy.twilio_url, plan, realtime=False)
        await twilio.stop()
    assert error is not None
    assert re.fullmatch(r"the proxy closed the stream .*code 1008 POLICY_VIOLATION: .+", error)
    assert first.call_sid in error


# --- what goes over the wire, through the proxy's parser ------------------------------------


@dataclass
class Recorder:
    """A WebSocket server that records each stream's text messages with their arrival time."""

    port: int = 0
    streams: list[list[tuple[float, str]]] = field(default_factory=list)
    close_codes: list[int | None] = field(default_factory=list)

    async def handle(self, ws: ServerConnection) -> None:
        received: list[tuple[float, str]] = []
        self.streams.append(received)
        loop = asyncio.get_running_loop()
        try:
            async for message in ws:
                assert isinstance(message, str), "Twilio sends text frames only"
                received.append((loop.time(), message))
        except ConnectionClosed:
            pass
        self.close_codes.append(ws.close_code)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio"


@asynccontextmanager
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()
    async with serve(rec.handle, "127.0.0.1", 0) as server:
        rec.port = server.sockets[0].getsockname()[1]
        yield rec


def check_twilio_stream(
    messages: Sequence[str],
    tracks: Mapping[Track, bytes],
    *,
    lost: Mapping[Track, frozenset[int]],
    start_frame: Mapping[Track, int],
    parameters: Mapping[str, str],
) -> str:
    """Check one stream against Twilio's format, message by message; return its callSid."""
    stream = TwilioStream()
    events = [stream.receive(text) for text in messages]  # raises on any protocol error
    raw = [json.loads(text) for text in messages]

    connected = events[0]
    assert connected == Connected(protocol="Call", version="1.0.0")
    assert set(raw[0]) == {"event", "protocol", "version"}  # no sequenceNumber, no streamSid

    start = events[1]
    assert isinstance(start, Start)
    for sid, prefix in (
        (start.call_sid, "CA"),
        (start.stream_sid, "MZ"),
        (start.account_sid, "AC"),
    ):
        assert sid.startswith(prefix) and SID.fullmatch(sid[2:]), sid
    assert start.tracks == tuple(tracks)
    assert dict(start.custom_parameters) == dict(parameters)
    assert (start.media_format.encoding, start.media_format.sample_rate) == ("audio/x-mulaw", 8000)
    assert start.media_format.channels == 1

    stop = events[-1]
    assert isinstance(stop, Stop)
    assert (stop.call_sid, stop.account_sid) == (start.call_sid, start.account_sid)

    # Every message after `connected` has a sequenceNumber counting from "1" and the streamSid.
    for i, message in enumerate(raw[1:], 1):
        assert message["sequenceNumber"] == str(i)
        assert message["streamSid"] == start.stream_sid

    media = [e for e in events if isinstance(e, Media)]
    assert len(media) == len(events) - 3
    assert [m.timestamp_ms for m in media] == sorted(m.timestamp_ms for m in media)
    for message in raw[2:-1]:
        body = message["media"]
        assert set(body) == {"track", "chunk", "timestamp", "payload"}
        assert all(isinstance(body[key], str) for key in ("chunk", "timestamp", "payload"))
    for track, data in tracks.items():
        sent = [m for m in media if m.track == track]
        first = start_frame.get(track, 0)
        frames = -(-len(data) // FRAME_BYTES)
        expected = [i for i in range(first, frames) if i not in lost.get(track, ())]
        assert [m.timestamp_ms for m in sent] == [20 * i for i in expected]
        # Chunks count the track's packets from 1 (a lost packet still used its number).
        assert [m.chunk for m in sent] == [i - first + 1 for i in expected]
        padded = data + bytes([SILENCE]) * (-len(data) % FRAME_BYTES)
        for m in sent:
            i = m.timestamp_ms // 20
            assert m.payload == padded[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
    return start.call_sid


async def test_every_message_on_the_wire_is_twilios_format(
    stereo: tuple[Path, list[int], list[int]],
) -> None:
    path, left, right = stereo
    parameters = {"From": "+15550100", "To": "+15550199", "note": "a b=c"}
    options = SimulateOptions(
        realtime=False, calls=2, drop=0.1, seed=7, outbound_delay_s=0.25, parameters=parameters
    )
    async with recorder() as rec:
        result, out, _ = await run_simulate(rec.url, path, options)
    assert result.exit_status == 0
    assert rec.close_codes == [1000, 1000]  # the simulator hung up normally after `stop`
    tracks: dict[Track, bytes] = {"inbound": mulaw(left), "outbound": mulaw(right)}
    sids = set()
    for received in rec.streams:
        plan = next(p for p in result.plans if p.call_sid in received[1][1])
        sids.add(
            check_twilio_stream(
                [text for _, text in received],
                tracks,
                lost=plan.lost,
                start_frame={"outbound": 12},  # 0.25 s, rounded down to 20 ms
                parameters=parameters,
            )
        )
    assert sids == set(out.split()) and len(sids) == 2


async def test_in_real_time_each_frame_is_sent_no_earlier_than_its_timestamp(
    tmp_path: Path,
) -> None:
    samples = tone(500, RATE * 4 // 10)  # 0.4 s
    path = write_wav(tmp_path / "short.wav", samples)
    async with recorder() as rec:
        result, _, _ = await run_simulate(rec.url, path, SimulateOptions())
    assert result.exit_status == 0
    (received,) = rec.streams
    check_twilio_stream(
        [text for _, text in received],
        {"inbound": mulaw(samples)},
        lost={},
        start_frame={},
        parameters={},
    )
    origin = received[0][0]
    for arrived, text in received[2:-1]:
        timestamp = int(json.loads(text)["media"]["timestamp"])
        assert arrived - origin >= timestamp / 1000 - 0.005
    assert received[-1][0] - origin >= 0.4 - 0.005  # `stop`, 20 ms after the last frame


# --- the command ----------------------------------------------------------------------------


async def run_command(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "twilio_dg_proxy",
        "simulate",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ,
    )
    async with asyncio.timeout(30 * S):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_command_streams_a_file_and_prints_the_call_sid(
    proxy: RunningProxy, deepgram: FakeDeepgram, stereo: tuple[Path, list[int], list[int]]
) -> None:
    path, left, right = stereo
    code, out, err = await run_command(
        str(path), "--url", proxy.twilio_url, "--fast", "--param", "From=+15550100"
    )
    assert code == 0, err
    assert re.fullmatch(r"CA[0-9a-f]{32}\n", out)
    (stream,) = await closed_streams(deepgram, 1)
    assert_channels(stream, [on_timeline(mulaw(left)), on_timeline(mulaw(right))])
    assert "Traceback" not in err


async def test_without_a_file_the_command_streams_the_bundled_sample(
    proxy: RunningProxy, deepgram: FakeDeepgram
) -> None:
    code, out, err = await run_command("--url", proxy.twilio_url, "--fast")
    assert code == 0, err
    assert re.fullmatch(r"CA[0-9a-f]{32}\n", out)
    assert "streaming sample_call.wav" in err
    (stream,) = await closed_streams(deepgram, 1)
    with sample_call() as path:
        tracks = read_tracks(path)
    assert bytes(stream.audio[0::2]).startswith(tracks["inbound"])
    assert bytes(stream.audio[1::2]).startswith(tracks["outbound"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.wav"], r"simulate: missing\.wav: no such file"),
        (["{dir}"], r"simulate: .*: no such file"),
        (["{mono}", "--outbound-delay", "1"], r"simulate: --outbound-delay needs a stereo file"),
        (["{bad}"], r"simulate: .*bad\.wav: cannot decode as PCM WAV"),
    ],
)
async def test_bad_input_is_one_clear_line_and_status_2(
    tmp_path: Path, args: list[str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # These are the messages without ffmpeg: with it, a WAV that pydub cannot parse goes
    # to ffmpeg, whose failure is reported instead (tests/unit/commands/test_simulate.py).
    (tmp_path / "no-ffmpeg").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "no-ffmpeg"))
    mono = write_wav(tmp_path / "mono.wav", [0] * 160)
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x24\x00\x00\x00WAVE" + b"\x00" * 40)
    args = [a.format(dir=tmp_path, mono=mono, bad=bad) for a in args]
    code, out, err = await run_command(*args)
    assert code == 2
    assert re.fullmatch(message + r"[^\n]*\n", err), err


@pytest.mark.parametrize(
    "option",
    [["--drop", "1"], ["--calls", "0"], ["--url", "http://x/twilio"], ["--url", "ws://h/t?a=b"]],
)
async def test_bad_options_are_refused_with_status_2(tmp_path: Path, option: list[str]) -> None:
    code, _, err = await run_command(str(tmp_path / "x.wav"), *option)
    assert code == 2 and "error: argument" in err


async def test_the_command_fails_with_status_1_when_no_proxy_listens(
    refusing_port: int, stereo: tuple[Path, list[int], list[int]]
) -> None:
    url = f"ws://127.0.0.1:{refusing_port}/twilio"
    code, out, err = await run_command(str(stereo[0]), "--url", url)
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (
        f"simulate: cannot connect to {url}: Connection refused (is the proxy running?)"
    )
