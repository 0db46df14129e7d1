"""The simulator's pure half: audio files into Twilio's tracks, loss plans, call plans; and the
bundled sample call."""

from __future__ import annotations

import array
import math
import random
import shutil
import subprocess
import wave
from collections.abc import Sequence
from pathlib import Path

import pytest

from twilio_dg_proxy.audio import (
    AudioFileError,
    AudioSegment,
    audioop,
    mulaw_decode,
    mulaw_encode,
    read_tracks,
    tracks_from_audio,
)
from twilio_dg_proxy.commands.simulate import CallPlan, Progress, loss_plan, plan_call
from twilio_dg_proxy.twilio_events import Media, Start, Stop, Track, TwilioEvent, TwilioStream
from twilio_dg_proxy.twilio_simulator import FRAME_BYTES, SILENCE

DATA = Path(__file__).resolve().parents[3] / "src" / "twilio_dg_proxy" / "data"


def pcm16(samples: Sequence[int]) -> bytes:
    return array.array("h", samples).tobytes()


def sine(frequency: float, rate: int, n: int, amplitude: int = 10_000) -> list[int]:
    return [round(amplitude * math.sin(2 * math.pi * frequency * i / rate)) for i in range(n)]


def write_wav(path: Path, channels: Sequence[Sequence[int]], rate: int, width: int = 2) -> Path:
    """A PCM WAV file whose channel c holds `channels[c]` (16-bit values, scaled to `width`)."""
    frames = bytearray()
    for frame in zip(*channels, strict=True):
        for value in frame:
            if width == 1:  # WAV's 8-bit PCM is unsigned
                frames.append((value >> 8) + 128)
            else:
                frames += (value << (8 * (width - 2))).to_bytes(width, "little", signed=True)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(len(channels))
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(bytes(frames))
    return path


def zero_crossings(pcm: bytes) -> int:
    samples = array.array("h", pcm)
    return sum(1 for a, b in zip(samples, samples[1:], strict=False) if (a < 0) != (b < 0))


# --- mu-law ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("sample", "byte"), [(0, 0xFF), (32767, 0x80), (-32768, 0x00)])
def test_mulaw_encodes_like_g711(sample: int, byte: int) -> None:
    assert mulaw_encode(pcm16([sample])) == bytes([byte])


def test_mulaw_silence_is_twilios_silence_byte() -> None:
    assert mulaw_encode(pcm16([0] * 160)) == bytes([SILENCE]) * 160


def test_mulaw_round_trips_within_its_quantisation_step() -> None:
    samples = sine(300, 8000, 800)
    decoded = array.array("h", mulaw_decode(mulaw_encode(pcm16(samples))))
    for before, after in zip(samples, decoded, strict=True):
        assert abs(before - after) <= max(8, abs(before) // 16)


# --- files into tracks ------------------------------------------------------------------------


def test_a_stereo_file_gives_left_as_inbound_and_right_as_outbound(tmp_path: Path) -> None:
    left, right = sine(400, 8000, 1000), sine(1000, 8000, 1000, amplitude=3000)
    tracks = read_tracks(write_wav(tmp_path / "call.wav", [left, right], 8000))
    assert list(tracks) == ["inbound", "outbound"]
    assert tracks["inbound"] == mulaw_encode(pcm16(left))
    assert tracks["outbound"] == mulaw_encode(pcm16(right))


def test_a_mono_file_gives_the_inbound_track_only(tmp_path: Path) -> None:
    samples = sine(400, 8000, 500)
    tracks = read_tracks(write_wav(tmp_path / "mono.wav", [samples], 8000))
    assert tracks == {"inbound": mulaw_encode(pcm16(samples))}


@pytest.mark.parametrize("rate", [16_000, 44_100, 48_000])
def test_other_rates_are_resampled_to_8_khz_keeping_the_pitch(tmp_path: Path, rate: int) -> None:
    seconds = 0.5
    n = int(rate * seconds)
    path = write_wav(tmp_path / "hi.wav", [sine(440, rate, n), sine(880, rate, n)], rate)
    tracks = read_tracks(path)
    expected: dict[Track, int] = {"inbound": 440, "outbound": 880}
    for track, frequency in expected.items():
        data = tracks[track]
        assert abs(len(data) - 4000) <= 2  # 0.5 s at 8000 bytes per second
        # A sine crosses zero twice per period: the pitch survived resampling.
        assert abs(zero_crossings(mulaw_decode(data)) - 2 * frequency * seconds) <= 4


@pytest.mark.parametrize("width", [1, 4])
def test_other_sample_widths_are_converted(tmp_path: Path, width: int) -> None:
    samples = sine(500, 8000, 400)
    tracks = read_tracks(write_wav(tmp_path / "w.wav", [samples], 8000, width=width))
    decoded = array.array("h", mulaw_decode(tracks["inbound"]))
    coarse = 256 if width == 1 else 0  # 8-bit input has steps of 256
    assert len(decoded) == len(samples)
    for before, after in zip(samples, decoded, strict=True):
        assert abs(before - after) <= max(8, abs(before) // 16) + coarse


def test_segments_from_memory_convert_too() -> None:
    segment = AudioSegment(data=pcm16([0, 1000] * 8), sample_width=2, frame_rate=8000, channels=2)
    tracks = tracks_from_audio(segment)
    assert tracks["inbound"] == bytes([SILENCE]) * 8
    assert tracks["outbound"] == mulaw_encode(pcm16([1000] * 8))


def test_more_than_two_channels_are_refused(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "three.wav", [[0] * 80] * 3, 8000)
    with pytest.raises(AudioFileError, match=r"three\.wav: expected a mono or stereo file, got 3"):
        read_tracks(path)


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match=r"missing\.wav: no such file"):
        read_tracks(tmp_path / "missing.wav")


def test_a_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(AudioFileError, match="no such file"):
        read_tracks(tmp_path)


@pytest.mark.usefixtures("no_ffmpeg")  # with ffmpeg, ffmpeg's failure is reported
def test_a_corrupt_wav_cannot_be_decoded(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage")
    with pytest.raises(AudioFileError, match=r"bad\.wav: cannot decode as PCM WAV"):
        read_tracks(path)


def test_a_truncated_wav_cannot_be_decoded(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "cut.wav", [[0] * 800], 8000)
    path.write_bytes(path.read_bytes()[:30])
    with pytest.raises(AudioFileError, match=r"cut\.wav: "):
        read_tracks(path)


@pytest.fixture
def no_ffmpeg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PATH on which neither ffmpeg nor avconv is found, installed or not."""
    empty = tmp_path / "no-ffmpeg"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


needs_ffmpeg = pytest.mark.skipif(
    shutil.which("ffmpeg") is None, reason="needs ffmpeg (.ci/run installs it)"
)


def ffmpeg(*args: str) -> None:
    """Run ffmpeg quietly; fail the test with its message if it fails."""
    done = subprocess.run(
        ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.usefixtures("no_ffmpeg")
def test_other_formats_say_they_need_ffmpeg(tmp_path: Path) -> None:
    path = tmp_path / "call.mp3"
    path.write_bytes(b"ID3 not really an mp3")
    with pytest.raises(AudioFileError, match=r"call\.mp3: not a WAV file; .* need ffmpeg"):
        read_tracks(path)


def mulaw_header_on_pcm(path: Path) -> Path:
    """`path` rewritten to claim mu-law (WAVE_FORMAT_MULAW) over its PCM data: pydub refuses it."""
    data = bytearray(path.read_bytes())
    data[20:22] = (7).to_bytes(2, "little")
    path.write_bytes(bytes(data))
    return path


@pytest.mark.usefixtures("no_ffmpeg")
def test_a_wav_encoding_pydub_cannot_parse_says_it_needs_ffmpeg(tmp_path: Path) -> None:
    path = mulaw_header_on_pcm(write_wav(tmp_path / "ulaw.wav", [[0] * 80], 8000))
    with pytest.raises(AudioFileError, match=r"ulaw\.wav: cannot decode as PCM WAV .*ffmpeg"):
        read_tracks(path)


@needs_ffmpeg
def test_a_flac_file_made_by_ffmpeg_is_decoded_sample_for_sample(tmp_path: Path) -> None:
    left, right = sine(400, 8000, 1600), sine(1000, 8000, 1600, amplitude=3000)
    source = write_wav(tmp_path / "source.wav", [left, right], 8000)
    ffmpeg("-i", str(source), str(tmp_path / "call.flac"))  # lossless, and not a WAV
    tracks = read_tracks(tmp_path / "call.flac")
    assert tracks == {"inbound": mulaw_encode(pcm16(left)), "outbound": mulaw_encode(pcm16(right))}


@needs_ffmpeg
def test_a_mulaw_wav_made_by_ffmpeg_keeps_its_samples(tmp_path: Path) -> None:
    source = write_wav(tmp_path / "source.wav", [sine(300, 8000, 1600)], 8000)
    ffmpeg("-i", str(source), "-c:a", "pcm_mulaw", str(tmp_path / "ulaw.wav"))
    data = (tmp_path / "ulaw.wav").read_bytes()
    assert data[20:22] == (7).to_bytes(2, "little")  # WAVE_FORMAT_MULAW: pydub cannot parse it
    mulaw = data[data.index(b"data") + 8 :]
    tracks = read_tracks(tmp_path / "ulaw.wav")
    assert list(tracks) == ["inbound"]
    # Twilio's audio is this mu-law: it reaches the tracks as it is (0x7F and 0xFF are
    # both zero, hence the comparison of the decoded samples).
    assert mulaw_decode(tracks["inbound"]) == mulaw_decode(mulaw)


def g711_wav(path: Path, fmt: int, frames: bytes, channels: int, rate: int = 8000) -> Path:
    """A WAV file of G.711 samples (format 6: A-law, 7: mu-law), as telephone tools write."""
    header = fmt.to_bytes(2, "little") + channels.to_bytes(2, "little")
    header += rate.to_bytes(4, "little") + (rate * channels).to_bytes(4, "little")
    header += channels.to_bytes(2, "little") + (8).to_bytes(2, "little") + b"\x00\x00"
    fact = b"fact" + (4).to_bytes(4, "little") + (len(frames) // channels).to_bytes(4, "little")
    body = b"fmt " + len(header).to_bytes(4, "little") + header + fact
    body += b"data" + len(frames).to_bytes(4, "little") + frames + b"\x00" * (len(frames) & 1)
    path.write_bytes(b"RIFF" + (4 + len(body)).to_bytes(4, "little") + b"WAVE" + body)
    return path


@pytest.mark.usefixtures("no_ffmpeg")
@pytest.mark.parametrize(("fmt", "encode"), [(7, audioop.lin2ulaw), (6, audioop.lin2alaw)])
def test_a_g711_wav_is_read_sample_for_sample_without_ffmpeg(
    tmp_path: Path, fmt: int, encode: object
) -> None:
    left, right = pcm16(sine(300, 8000, 801)), pcm16(sine(700, 8000, 801, 3_000))
    g711 = [encode(x, 2) for x in (left, right)]  # type: ignore[operator]
    frames = bytes(b for pair in zip(g711[0], g711[1], strict=True) for b in pair)
    tracks = read_tracks(g711_wav(tmp_path / "call.wav", fmt, frames, channels=2))
    decode = audioop.ulaw2lin if fmt == 7 else audioop.alaw2lin
    # What the file holds, each channel on its track, as 16-bit PCM re-encoded as mu-law.
    assert tracks == {
        "inbound": mulaw_encode(decode(g711[0], 2)),
        "outbound": mulaw_encode(decode(g711[1], 2)),
    }


@needs_ffmpeg
def test_a_file_ffmpeg_cannot_decode_either_says_so(tmp_path: Path) -> None:
    path = tmp_path / "call.mp3"
    path.write_bytes(b"ID3 not really an mp3")
    with pytest.raises(AudioFileError, match=r"call\.mp3: cannot decode audio: "):
        read_tracks(path)


def test_audioop_is_importable_from_the_audio_module_without_warnings() -> None:
    # pytest turns warnings into errors: reaching this line means the import was quiet.
    assert audioop.lin2ulaw(pcm16([0]), 2) == bytes([SILENCE])


# --- loss plans ---------------------------------------------------------------------------


def test_no_loss_drops_nothing() -> None:
    assert loss_plan(1000, 0.0, random.Random(1)) == frozenset()


def test_a_seeded_plan_repeats_and_another_seed_differs() -> None:
    first = loss_plan(1000, 0.1, random.Random("7:0"))
    assert first == loss_plan(1000, 0.1, random.Random("7:0"))
    assert first != loss_plan(1000, 0.1, random.Random("7:1"))


def test_the_loss_rate_is_the_probability() -> None:
    lost = loss_plan(20_000, 0.05, random.Random(3))
    assert all(0 <= i < 20_000 for i in lost)
    assert 800 < len(lost) < 1200


@pytest.mark.parametrize("probability", [-0.1, 1.0, 1.5])
def test_a_probability_outside_0_1_is_refused(probability: float) -> None:
    with pytest.raises(ValueError, match="probability"):
        loss_plan(10, probability, random.Random())


# --- call plans ---------------------------------------------------------------------------


def parsed(plan: CallPlan) -> list[TwilioEvent]:
    """Every message of the plan, through the proxy's own parser and order rules."""
    stream = TwilioStream()
    return [stream.receive(text) for _, text in plan.messages]


def media(plan: CallPlan) -> list[Media]:
    return [event for event in parsed(plan) if isinstance(event, Media)]


def test_a_plan_carries_the_tracks_frame_by_frame_and_announces_them() -> None:
    tracks: dict[Track, bytes] = {
        "inbound": bytes(range(100)) * 5,
        "outbound": bytes(range(100, 200)) * 5,
    }
    plan = plan_call(tracks, parameters={"From": "+15550100"})
    events = parsed(plan)
    start = events[1]
    assert isinstance(start, Start) and start.call_sid == plan.call_sid
    assert start.tracks == ("inbound", "outbound")
    assert dict(start.custom_parameters) == {"From": "+15550100"}
    assert isinstance(events[-1], Stop)
    for track, data in tracks.items():
        frames = [m for m in media(plan) if m.track == track]
        assert [m.chunk for m in frames] == [1, 2, 3, 4]
        assert [m.timestamp_ms for m in frames] == [0, 20, 40, 60]
        padded = data + bytes([SILENCE]) * (4 * FRAME_BYTES - len(data))
        assert b"".join(m.payload for m in frames) == padded
    assert plan.duration_s == 0.08
    assert plan.lost == {"inbound": frozenset(), "outbound": frozenset()}


def test_a_mono_plan_announces_the_inbound_track_only() -> None:
    plan = plan_call({"inbound": b"\x00" * 320})
    assert plan.call.tracks == ("inbound",)
    assert {m.track for m in media(plan)} == {"inbound"}


def test_lost_frames_are_missing_and_the_rest_keep_their_chunk_and_timestamp() -> None:
    tracks: dict[Track, bytes] = {"inbound": b"\x01" * 16_000, "outbound": b"\x81" * 16_000}
    plan = plan_call(tracks, drop=0.2, rng=random.Random(5))
    assert plan.lost["inbound"] and plan.lost["outbound"]
    assert plan.lost["inbound"] != plan.lost["outbound"]
    for track in tracks:
        sent = [m for m in media(plan) if m.track == track]
        indices = {m.timestamp_ms // 20 for m in sent}
        assert indices == set(range(100)) - plan.lost[track]
        assert all(m.chunk == m.timestamp_ms // 20 + 1 for m in sent)
    sequence = [e.sequence_number for e in parsed(plan) if isinstance(e, Start | Media | Stop)]
    assert sequence == list(range(1, len(sequence) + 1))  # lost packets never reach the socket


def test_an_outbound_delay_starts_the_outbound_track_late_on_the_same_timeline() -> None:
    outbound = bytes(range(128, 228)) * 40  # 0.5 s
    tracks: dict[Track, bytes] = {"inbound": b"\x01" * 4000, "outbound": outbound}
    plan = plan_call(tracks, outbound_delay_ms=210, drop=0.1, rng=random.Random(2))
    sent = [m for m in media(plan) if m.track == "outbound"]
    assert plan.call.tracks == ("inbound", "outbound")  # announced from the start
    first = sent[0]
    lost = plan.lost["outbound"]
    assert all(i >= 10 for i in lost)  # indices on the file's timeline
    if 10 not in lost:
        assert (first.chunk, first.timestamp_ms) == (1, 200)  # rounded down to 20 ms
    for m in sent:
        i = m.timestamp_ms // 20
        assert m.chunk == i - 10 + 1
        assert m.payload == outbound[i * FRAME_BYTES : (i + 1) * FRAME_BYTES]
    assert plan.duration_s == 0.5


def test_a_plan_is_sent_in_timestamp_order_with_stop_last() -> None:
    tracks: dict[Track, bytes] = {"inbound": b"\x01" * 800, "outbound": b"\x81" * 800}
    plan = plan_call(tracks, outbound_delay_ms=40)
    times = [t for t, _ in plan.messages]
    assert times == sorted(times)
    assert times[-1] == pytest.approx(times[-2] + 0.02)


def test_progress_counts_messages_and_follows_the_slowest_call() -> None:
    plans = [plan_call({"inbound": b"\x01" * 8000}) for _ in range(2)]
    progress = Progress(plans)
    assert progress.line() == "2 calls: 0.0 / 1.0 s of audio, 0 messages sent, 0 of 2 ended"
    progress.sent(0, 0.5)
    progress.sent(1, 0.25)
    progress.ended(0)
    assert progress.line() == "2 calls: 0.2 / 1.0 s of audio, 2 messages sent, 1 of 2 ended"
    assert Progress(plans[:1]).line().startswith("1 call: ")


# --- the bundled sample call ---------------------------------------------------------------


def rms_windows(data: bytes, window: int = 800) -> list[int]:
    pcm = mulaw_decode(data)
    return [audioop.rms(pcm[i : i + 2 * window], 2) for i in range(0, len(pcm), 2 * window)]


def test_the_sample_call_is_a_small_stereo_8_khz_wav() -> None:
    path = DATA / "sample_call.wav"
    assert path.stat().st_size < 1_000_000
    with wave.open(str(path)) as wav:
        assert (wav.getnchannels(), wav.getframerate(), wav.getsampwidth()) == (2, 8000, 2)
        assert 15 <= wav.getnframes() / 8000 <= 25


def test_the_sample_call_alternates_speakers_with_silence_on_the_other_channel() -> None:
    tracks = read_tracks(DATA / "sample_call.wav")
    caller, callee = rms_windows(tracks["inbound"]), rms_windows(tracks["outbound"])
    # Every 100 ms window: at most one speaker, as on a real call.
    assert not any(a > 100 and b > 100 for a, b in zip(caller, callee, strict=True))
    turns: list[str] = []
    for a, b in zip(caller, callee, strict=True):
        speaker = "caller" if a > 300 else "callee" if b > 300 else None
        if speaker and (not turns or turns[-1] != speaker):
            turns.append(speaker)
    script = (DATA / "sample_call.txt").read_text().splitlines()
    assert turns == [line.split(":")[0] for line in script]


def test_the_sample_script_is_one_turn_per_line_alternating() -> None:
    lines = (DATA / "sample_call.txt").read_text().splitlines()
    speakers = [line.split(": ", 1)[0] for line in lines]
    assert set(speakers) == {"caller", "callee"}
    assert all(a != b for a, b in zip(speakers, speakers[1:], strict=False))
    assert all(line.split(": ", 1)[1].strip() for line in lines)
