"""A finished call's transcript as captions (pure): `webvtt` and `srt`, one cue per few
seconds of one speaker's words, in time order across both channels.

Deepgram's `deepgram-captions` 2.0.0 does not fit live results, so this formatter is ours: its
`DeepgramConverter` reads a pre-recorded response (`results.channels[0]`; a live `Results` has
no `results`), and with our own `get_lines` it still names voices `<v Speaker N>` (SRT
`[speaker N]`), splits by word count only, escapes nothing (`<`, `&`, `-->`), writes
zero-length cues and raises on an empty transcript: only its timestamps would be left to use.

Cues: each final's transcript is split into cues of at most `MAX_CUE_S` seconds and
`MAX_LINES` lines of `MAX_LINE_CHARS` characters (a longer word stands alone), timed by the
final's words when they match its transcript word for word, else by sharing the final's span
among its words by length. Every cue lasts at least `MIN_CUE_MS`. Cues of both channels are
sorted by start, each channel's in the order of its words; overlapping speech across channels
stays in separate cues (legal in WebVTT; in SRT too, where players show both).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from . import json_loads
from .transcripts import (
    FinishedCall,
    channel_of,
    is_final_with_text,
    is_time,
    seconds,
    speaker_name,
    speakers,
)

__all__ = ["MAX_CUE_S", "MAX_LINES", "MAX_LINE_CHARS", "MIN_CUE_MS", "Cue", "cues", "srt", "webvtt"]

MAX_CUE_S = 7.0
"""The longest a cue lasts (from its first word's start to its last word's end), unless a
single word lasts longer."""
MAX_LINE_CHARS = 42
"""The most characters on a line of a cue (the speaker's label aside)."""
MAX_LINES = 2
"""The most lines in a cue."""
MIN_CUE_MS = 100
"""The shortest a cue lasts: zero-length words and finals still give a cue that shows."""


@dataclass(frozen=True, slots=True)
class Cue:
    """One caption: `lines` of `speaker`'s words (plain text, each without line breaks) shown
    from `start_ms` to `end_ms` (> `start_ms`) on the call's timeline."""

    start_ms: int
    end_ms: int
    channel: int
    speaker: str
    lines: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Token:
    text: str
    start: float
    end: float


@dataclass(frozen=True, slots=True)
class _Final:
    start: float
    channel: int
    tokens: tuple[_Token, ...]


def webvtt(call: FinishedCall) -> str:
    """The call's transcript as a WebVTT file: the `WEBVTT` header, a NOTE naming the
    callSid, then one cue per `Cue` with its speaker in a voice span (`<v Caller>…`).
    Without words: just the header, `WEBVTT\\n\\n`."""
    found = cues(call)
    if not found:
        return "WEBVTT\n\n"
    parts = ["WEBVTT\n\n"]
    sid = _note_safe(call.info.call_sid)
    if sid:
        parts.append(f"NOTE callSid {sid}\n\n")
    for cue in found:
        timing = f"{_timestamp(cue.start_ms, '.')} --> {_timestamp(cue.end_ms, '.')}"
        text = "\n".join(_vtt_escape(line) for line in cue.lines)
        parts.append(f"{timing}\n<v {_vtt_escape(cue.speaker)}>{text}\n\n")
    return "".join(parts)


def srt(call: FinishedCall) -> str:
    """The call's transcript as a SubRip file: numbered cues, each first line prefixed with
    its speaker (`Caller: …`). Without words: the empty string. SRT has no escapes: the text
    is written as it is, on lines without breaks."""
    return "".join(
        f"{index}\n{_timestamp(cue.start_ms, ',')} --> {_timestamp(cue.end_ms, ',')}\n"
        f"{cue.speaker}: " + "\n".join(cue.lines) + "\n\n"
        for index, cue in enumerate(cues(call), start=1)
    )


def cues(call: FinishedCall) -> list[Cue]:
    """The call's cues, sorted by start (ties: channel 0 first, then the order spoken).

    Each channel's cues keep the order of its words in the transcript (`transcripts.segments`):
    a cue never starts before the one before it on its channel.
    """
    names = [_one_line(name) for name in speakers(call.info.custom_parameters)]
    earliest: dict[int, int] = {}
    found: list[Cue] = []
    for final in sorted(_finals(call.finals), key=lambda f: (f.start, f.channel)):
        speaker = speaker_name(names, final.channel)
        for group in _groups(final.tokens):
            start_ms = max(earliest.get(final.channel, 0), _ms(group[0].start))
            end_ms = max(_ms(max(token.end for token in group)), start_ms + MIN_CUE_MS)
            earliest[final.channel] = start_ms
            found.append(Cue(start_ms, end_ms, final.channel, speaker, _lines(group)))
    return sorted(found, key=lambda cue: (cue.start_ms, cue.channel))


# Reading the finals.


def _finals(texts: Sequence[str]) -> Iterator[_Final]:
    """The finals with text among `texts` (anything else is skipped), as timed words."""
    for text in texts:
        message = json_loads.object_or_none(text)
        if message is None or not is_final_with_text(message):
            continue
        start = seconds(message.get("start"))
        end = start + max(0.0, seconds(message.get("duration")))
        alternative = message["channel"]["alternatives"][0]
        words = alternative["transcript"].split()
        timed = _word_times(alternative.get("words"), len(words))
        tokens = (
            tuple(_Token(w, s, e) for w, (s, e) in zip(words, timed, strict=True))
            if timed is not None
            else _spread(words, start, end)
        )
        yield _Final(start, channel_of(message), tokens)


def _word_times(words: object, count: int) -> list[tuple[float, float]] | None:
    """The (start, end) of each of Deepgram's `words`, if there are `count` of them, each
    with its times; None otherwise."""
    if not isinstance(words, list) or len(words) != count:
        return None
    times: list[tuple[float, float]] = []
    for word in words:
        if not isinstance(word, dict):
            return None
        start, end = word.get("start"), word.get("end")
        if not is_time(start) or not is_time(end):
            return None
        times.append((seconds(start), max(seconds(start), seconds(end))))
    return times


def _spread(words: Sequence[str], start: float, end: float) -> tuple[_Token, ...]:
    """`words` sharing [start, end] in proportion to their lengths (a space included)."""
    total = sum(len(word) + 1 for word in words)
    tokens: list[_Token] = []
    done = 0
    for word in words:
        begin = start + (end - start) * done / total
        done += len(word) + 1
        tokens.append(_Token(word, begin, start + (end - start) * done / total))
    return tuple(tokens)


# Splitting a final into cues.


def _groups(tokens: Sequence[_Token]) -> Iterator[list[_Token]]:
    """`tokens` in runs that each fit one cue (`MAX_CUE_S`, `MAX_LINES` × `MAX_LINE_CHARS`)."""
    group: list[_Token] = []
    for token in tokens:
        candidate = [*group, token]
        if group and (token.end - group[0].start > MAX_CUE_S or len(_lines(candidate)) > MAX_LINES):
            yield group
            candidate = [token]
        group = candidate
    if group:
        yield group


def _lines(tokens: Sequence[_Token]) -> tuple[str, ...]:
    """`tokens`' words filled greedily into lines of `MAX_LINE_CHARS` (a longer word stands
    alone on its line)."""
    lines: list[str] = []
    for token in tokens:
        if lines and len(lines[-1]) + 1 + len(token.text) <= MAX_LINE_CHARS:
            lines[-1] = f"{lines[-1]} {token.text}"
        else:
            lines.append(token.text)
    return tuple(lines)


# Writing.


def _ms(seconds: float) -> int:
    """Whole milliseconds, never before the call began."""
    return max(0, round(seconds * 1000))


def _timestamp(ms: int, separator: str) -> str:
    """`HH:MM:SS.mmm` (WebVTT, `separator` ".") or `HH:MM:SS,mmm` (SRT, ",")."""
    seconds, millis = divmod(ms, 1000)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


_VTT_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _vtt_escape(text: str) -> str:
    """WebVTT cue text (or voice annotation) for `text`: `&`, `<`, `>` as character
    references, so no tag and no `-->` can appear."""
    return text.translate(_VTT_ESCAPES)


def _one_line(text: str) -> str:
    """`text` with every run of white space (line breaks included) as one space."""
    return " ".join(text.split())


def _note_safe(text: str) -> str:
    """`text` with only word characters and hyphens: safe in a NOTE (no `-->`, no line)."""
    return re.sub(r"[^\w-]", "", text)
