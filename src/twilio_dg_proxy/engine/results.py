"""Deepgram ``Results`` from the engine's decoded words (pure).

The message itself is `deepgram_server_protocol.results_message`, shared with the synthetic
engine, so the two cannot drift apart in field names. What the engine adds: Deepgram's word
objects from Whisper's words, their transcript and confidence, and the engine's model.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final, TypeAlias

from ..deepgram_server_protocol import results_message
from .model import MODEL_INFO, MODEL_UUID, Word

__all__ = ["bare_word", "deepgram_words", "engine_results"]

JSONDict: TypeAlias = dict[str, Any]

# Punctuation at either end of a word; apostrophes stay (o'clock, don't).
_EDGE_PUNCTUATION: Final = re.compile(r"^[^\w']+|[^\w']+$")


def bare_word(text: str) -> str:
    """Deepgram's ``word`` for Whisper's `text`: lower case, no leading or trailing punctuation
    (``"Hello,"`` gives ``"hello"``, ``"o'clock."`` gives ``"o'clock"``)."""
    return _EDGE_PUNCTUATION.sub("", text.lower())


def deepgram_words(
    words: Sequence[Word], *, offset: float, start: float, end: float
) -> list[JSONDict]:
    """Deepgram word objects for `words` decoded from audio that began at `offset` seconds.

    Times are moved onto the stream's timeline and kept within [`start`, `end`] (the message's
    span). Tokens that are only punctuation are dropped.
    """
    out: list[JSONDict] = []
    for word in words:
        bare = bare_word(word.text)
        if not bare:
            continue
        word_start = min(max(offset + word.start, start), end)
        word_end = min(max(offset + word.end, word_start), end)
        out.append(
            {
                "word": bare,
                "start": round(word_start, 3),
                "end": round(word_end, 3),
                "confidence": round(word.probability, 4),
                "punctuated_word": word.text,
            }
        )
    return out


def engine_results(
    words: Sequence[Word],
    *,
    offset: float,
    start: float,
    end: float,
    channel: int,
    channels: int,
    is_final: bool,
    speech_final: bool,
    from_finalize: bool,
    punctuate: bool,
    request_id: str,
) -> JSONDict:
    """A ``Results`` message for `words` (decoded from audio starting at `offset` seconds),
    covering `start`..`end` seconds of the stream on `channel` of `channels`.

    The transcript joins the punctuated words when `punctuate`, else the bare ones; the
    confidence is the mean of the words' (0 with no words).
    """
    dg_words = deepgram_words(words, offset=offset, start=start, end=end)
    key = "punctuated_word" if punctuate else "word"
    transcript = " ".join(word[key] for word in dg_words)
    confidence = sum(w["confidence"] for w in dg_words) / len(dg_words) if dg_words else 0.0
    return results_message(
        transcript=transcript,
        channel=channel,
        channels=channels,
        start=round(start, 3),
        duration=round(end - start, 3),
        is_final=is_final,
        speech_final=speech_final,
        from_finalize=from_finalize,
        request_id=request_id,
        words=dg_words,
        confidence=round(confidence, 4),
        model_uuid=MODEL_UUID,
        model_info=MODEL_INFO,
    )
