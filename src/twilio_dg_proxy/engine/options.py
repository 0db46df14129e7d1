"""The query options of one engine stream, read and checked at the upgrade (pure).

The audio format (``encoding=mulaw``, ``sample_rate=8000``, ``channels`` 1 or 2,
``multichannel=true`` with 2) is checked by `deepgram_server_protocol.query_problem`, shared
with the synthetic engine. Here: the options that change what the engine sends. Anything else
Deepgram knows (``model``, ``language``, ``diarize``, ...) is accepted and ignored, as the
proxy passes the user's options through unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .segmenter import DEFAULT_ENDPOINTING_MS, SegmenterConfig

__all__ = ["MIN_ENDPOINTING_MS", "OptionError", "StreamOptions"]

MIN_ENDPOINTING_MS: Final = 300
"""Shorter endpointing values are raised to this: cut at every short pause, Whisper would
be fed word fragments (Deepgram's own default, 10 ms, suits a streaming model only)."""
MIN_UTTERANCE_END_MS: Final = 1000  # Deepgram's documented minimum


class OptionError(ValueError):
    """A query option has a value the engine refuses (HTTP 400 at the upgrade)."""


@dataclass(frozen=True, slots=True)
class StreamOptions:
    """What a stream's query asked for.

    `punctuate` is true with ``punctuate=true`` or ``smart_format=true``: transcripts then keep
    Whisper's capitals and punctuation, else they are lower case without punctuation.
    `endpointing_ms` None means ``endpointing=false``.
    """

    channels: int
    interim_results: bool = False
    punctuate: bool = False
    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS
    utterance_end_ms: int | None = None
    vad_events: bool = False

    @classmethod
    def from_query(cls, params: Mapping[str, str]) -> StreamOptions:
        """Read the options from a query already accepted by `query_problem`.

        Raises OptionError naming the option when a value is not one the engine takes.
        """
        interim = _flag(params, "interim_results")
        utterance_end_ms = None
        if "utterance_end_ms" in params:
            utterance_end_ms = _milliseconds(params, "utterance_end_ms")
            if utterance_end_ms < MIN_UTTERANCE_END_MS:
                raise OptionError(f"utterance_end_ms must be at least {MIN_UTTERANCE_END_MS}")
            if not interim:
                raise OptionError("utterance_end_ms requires interim_results=true")
        return cls(
            channels=int(params["channels"]),
            interim_results=interim,
            punctuate=_flag(params, "punctuate") or _flag(params, "smart_format"),
            endpointing_ms=_endpointing(params),
            utterance_end_ms=utterance_end_ms,
            vad_events=_flag(params, "vad_events"),
        )

    def segmenter_config(self) -> SegmenterConfig:
        """The segmenter settings these options imply."""
        return SegmenterConfig(
            endpointing_ms=self.endpointing_ms, utterance_end_ms=self.utterance_end_ms
        )


def _flag(params: Mapping[str, str], name: str) -> bool:
    value = params.get(name, "false").lower()
    if value not in ("true", "false"):
        raise OptionError(f"{name} must be true or false")
    return value == "true"


def _milliseconds(params: Mapping[str, str], name: str) -> int:
    raw = params[name]
    if not raw.isdigit():
        raise OptionError(f"{name} must be a whole number of milliseconds")
    return int(raw)


def _endpointing(params: Mapping[str, str]) -> int | None:
    raw = params.get("endpointing", "true").lower()
    if raw == "false":
        return None
    if raw == "true":
        return DEFAULT_ENDPOINTING_MS
    return max(MIN_ENDPOINTING_MS, _milliseconds(params, "endpointing"))
