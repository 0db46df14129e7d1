"""Audio files and mu-law: pydub and `audioop` imported once, quietly, for the whole project.

Why this module exists: on Python 3.11 and 3.12 importing the standard library's `audioop`
(which pydub does at import) emits a DeprecationWarning, pydub warns at import when ffmpeg is
not installed, and on 3.12+ compiling pydub's sources warns about its regular expressions.
The test suite turns every warning into an error, and a user of `simulate` or `demo` should
not see them either. So every part of the project that needs pydub or `audioop` imports them
from here: `from twilio_dg_proxy.audio import AudioSegment, audioop`. On Python 3.13+
`audioop` is the `audioop-lts` package (a dependency there) and imports silently.

Twilio's audio is 8 kHz mono mu-law, one byte per sample, per track.
"""

from __future__ import annotations

import shutil
import warnings
from contextlib import AbstractContextManager
from importlib.resources import as_file, files
from pathlib import Path
from typing import Final

from .twilio_events import Track

with warnings.catch_warnings():
    # Only the import-time warnings described above are silenced, and only here.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", RuntimeWarning)
    warnings.simplefilter("ignore", SyntaxWarning)
    import audioop

    from pydub import AudioSegment

__all__ = [
    "SAMPLE_RATE",
    "AudioFileError",
    "AudioSegment",
    "SAMPLE_CALL",
    "audioop",
    "load_audio",
    "mulaw_decode",
    "mulaw_encode",
    "read_tracks",
    "sample_call",
    "tracks_from_audio",
]

#: Twilio's sample rate: 8000 mu-law bytes per second per track.
SAMPLE_RATE: Final = 8000
_PCM_WIDTH: Final = 2  # bytes per sample of the linear PCM that mu-law is made from
#: The bundled two-person call, in the package (data/make_sample.sh makes it).
SAMPLE_CALL: Final = "data/sample_call.wav"


def sample_call() -> AbstractContextManager[Path]:
    """The bundled call (stereo WAV: caller left, callee right) as a file, while in context."""
    return as_file(files("twilio_dg_proxy").joinpath(SAMPLE_CALL))


class AudioFileError(Exception):
    """An audio file cannot be used; the message says why in one line, naming the file."""


def mulaw_encode(pcm16: bytes) -> bytes:
    """Return the mu-law bytes of `pcm16` (signed 16-bit little-endian samples)."""
    return audioop.lin2ulaw(pcm16, _PCM_WIDTH)


def mulaw_decode(mulaw: bytes) -> bytes:
    """Return `mulaw` decoded to signed 16-bit little-endian samples."""
    return audioop.ulaw2lin(mulaw, _PCM_WIDTH)


def _has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None or shutil.which("avconv") is not None


def load_audio(path: Path) -> AudioSegment:
    """Read an audio file with pydub.

    PCM WAV files are parsed by pydub itself; any other format, or WAV encoding (float,
    mu-law, ...), goes through ffmpeg. Raises `AudioFileError` for a missing, unreadable or
    undecodable file, or when ffmpeg is needed and not installed.
    """
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise AudioFileError(f"{path}: cannot read: {exc.strerror}") from None
    problem = "not a WAV file"
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        g711 = g711_wav(data)
        if g711 is not None:
            return g711
        try:
            # From bytes, not from the path: pydub would leave a file it opened unclosed.
            return AudioSegment(data=data)
        except Exception as exc:  # CouldntDecodeError, or struct.error on a truncated file
            problem = f"cannot decode as PCM WAV ({_reason(exc)})"
    if not _has_ffmpeg():
        raise AudioFileError(
            f"{path}: {problem}; other formats and WAV encodings need ffmpeg "
            "(e.g. apt-get install ffmpeg)"
        )
    try:
        with warnings.catch_warnings():
            # pydub warns (RuntimeWarning) when ffprobe is missing, then fails: we report that.
            warnings.simplefilter("ignore", RuntimeWarning)
            return AudioSegment.from_file(path)
    except Exception as exc:  # pydub raises CouldntDecodeError, IndexError, OSError, ...
        raise AudioFileError(f"{path}: cannot decode audio: {_reason(exc)}") from None


# WAVE format tags of G.711, the telephone codecs (Twilio's audio is mu-law).
_G711_DECODERS: Final = {6: audioop.alaw2lin, 7: audioop.ulaw2lin}


def g711_wav(data: bytes) -> AudioSegment | None:
    """A mu-law or A-law WAV file's audio as 16-bit PCM; None for any other file.

    pydub cannot read these, and through ffmpeg it asks for 8-bit linear PCM (its choice for
    every 8-bit codec), which throws away most of a quiet voice's resolution; decoding
    G.711 here keeps every sample as the phone network carried it.
    """
    chunks: dict[bytes, bytes] = {}
    offset = 12
    while offset + 8 <= len(data):
        name, size = (
            data[offset : offset + 4],
            int.from_bytes(data[offset + 4 : offset + 8], "little"),
        )
        chunks.setdefault(name, data[offset + 8 : offset + 8 + size])
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    fmt = chunks.get(b"fmt ", b"")
    if len(fmt) < 16 or b"data" not in chunks:
        return None
    decode = _G711_DECODERS.get(int.from_bytes(fmt[0:2], "little"))
    channels = int.from_bytes(fmt[2:4], "little")
    rate = int.from_bytes(fmt[4:8], "little")
    if decode is None or fmt[14:16] != b"\x08\x00" or channels < 1 or rate < 1:
        return None
    samples = chunks[b"data"][: len(chunks[b"data"]) // channels * channels]
    pcm = decode(samples, _PCM_WIDTH)
    return AudioSegment(data=pcm, sample_width=_PCM_WIDTH, frame_rate=rate, channels=channels)


def _reason(exc: Exception) -> str:
    """The first line of an error's message (ffmpeg's can run to pages), or its type."""
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def tracks_from_audio(audio: AudioSegment) -> dict[Track, bytes]:
    """Return Twilio's tracks for `audio`: 8 kHz mu-law bytes per track.

    A mono segment gives the inbound track only; a stereo one gives inbound (left channel)
    and outbound (right). Each channel is resampled to 8 kHz and 16-bit before encoding.
    Raises `AudioFileError` for more than two channels.
    """
    channels = int(audio.channels)
    if channels not in (1, 2):
        raise AudioFileError(f"expected a mono or stereo file, got {channels} channels")
    names: tuple[Track, ...] = ("inbound", "outbound")
    tracks: dict[Track, bytes] = {}
    for track, mono in zip(names, audio.split_to_mono(), strict=False):
        pcm = mono.set_sample_width(_PCM_WIDTH).set_frame_rate(SAMPLE_RATE)
        tracks[track] = mulaw_encode(pcm.raw_data)
    return tracks


def read_tracks(path: Path) -> dict[Track, bytes]:
    """Read an audio file into Twilio's tracks (`load_audio`, then `tracks_from_audio`).

    Raises `AudioFileError` naming the file when it cannot be used.
    """
    audio = load_audio(path)
    try:
        return tracks_from_audio(audio)
    except AudioFileError as exc:
        raise AudioFileError(f"{path}: {exc}") from None
