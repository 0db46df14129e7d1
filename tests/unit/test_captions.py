"""Captions: every output read back by parsers we did not write (webvtt-py for WebVTT and
SRT, srt for SRT), a property over random finals, and small exact files."""

from __future__ import annotations

import html
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import srt as srt_parser  # type: ignore[import-untyped]  # srt ships no type hints
import webvtt as webvtt_parser
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from twilio_dg_proxy.captions import MAX_LINE_CHARS, MIN_CUE_MS, cues, srt, webvtt
from twilio_dg_proxy.deepgram_server_protocol import results_message
from twilio_dg_proxy.transcripts import FinishedCall, segments, speakers
from twilio_dg_proxy.viewer_protocol import CallInfo

Words = Sequence[tuple[str, float, float]]


def final(
    text: str,
    *,
    channel: int = 0,
    start: float = 0.0,
    duration: float = 1.0,
    words: Words | None = None,
) -> str:
    """A final `Results` message as the proxy stores it (words only when given)."""
    alternative: dict[str, Any] = {"transcript": text, "confidence": 0.9}
    if words is not None:
        alternative["words"] = [
            {"word": w.lower(), "start": s, "end": e, "confidence": 0.9, "punctuated_word": w}
            for w, s, e in words
        ]
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, 2],
            "start": start,
            "duration": duration,
            "is_final": True,
            "channel": {"alternatives": [alternative]},
        }
    )


def call(*finals: str, parameters: Mapping[str, str] | None = None) -> FinishedCall:
    info = CallInfo("CA1", dict(parameters or {}), ("inbound", "outbound"), 1_000)
    return FinishedCall(info, 9_000, 1000, "", (), finals)


def one_second_words(text: str, first: float = 0.0) -> list[tuple[str, float, float]]:
    return [(w, first + i, first + i + 1) for i, w in enumerate(text.split())]


# Reading back, with parsers we did not write.


@dataclass(frozen=True)
class Read:
    """A cue as a parser read it: times, speaker label and text (markup and escapes gone)."""

    start_ms: int
    end_ms: int
    speaker: str
    text: str


_MS = timedelta(milliseconds=1)


def read_webvtt(text: str) -> list[Read]:
    captions = webvtt_parser.from_string(text, strict=True).captions
    return [
        Read(
            c.start_time.in_milliseconds(),
            c.end_time.in_milliseconds(),
            html.unescape(c.voice or ""),
            html.unescape(c.text),
        )
        for c in captions
    ]


def read_srt(text: str, labels: Sequence[str] = ("Caller", "Callee")) -> list[Read]:
    """The cues of an SRT file as `srt` reads them (the speaker: the longest of `labels` that
    prefixes the text), checked against webvtt-py's reading."""
    parsed = list(srt_parser.parse(text))
    found = []
    for subtitle in parsed:
        speaker = max(
            (label for label in labels if subtitle.content.startswith(f"{label}: ")), key=len
        )
        rest = subtitle.content.removeprefix(f"{speaker}: ")
        found.append(Read(subtitle.start // _MS, subtitle.end // _MS, speaker, rest))
    if text:
        other = webvtt_parser.from_buffer(io.StringIO(text), format="srt").captions
        assert [(c.start_time.in_milliseconds(), c.end_time.in_milliseconds()) for c in other] == [
            (r.start_ms, r.end_ms) for r in found
        ]
        assert [c.raw_text for c in other] == [s.content for s in parsed]
    return found


def words_by_channel(read: Sequence[Read], names: Sequence[str]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {0: [], 1: []}
    for cue in read:
        found[names.index(cue.speaker)].extend(cue.text.split())
    return found


def transcript_words(finished: FinishedCall) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {0: [], 1: []}
    for segment in segments(finished):
        found[segment.channel].extend(segment.text.split())
    return found


# The property.

tokens = st.text(
    alphabet=st.one_of(st.sampled_from("<>&-v"), st.characters(codec="utf-8")),
    min_size=1,
    max_size=12,
).filter(lambda t: not t.isspace())
separators = st.sampled_from([" ", "  ", "\n", "\t", " \r\n "])


@st.composite
def finals_of_a_channel(draw: st.DrawFn, channel: int) -> list[str]:
    """A channel's finals, most as Deepgram tiles a channel (each starting where the one before
    ended or later), some overlapping, some with zero duration, some with words (zero-length
    ones included)."""
    found: list[str] = []
    clock = draw(st.floats(-1, 5))
    for _ in range(draw(st.integers(0, 4))):
        parts = draw(st.lists(tokens, min_size=1, max_size=25))
        text = "".join(p + draw(separators) for p in parts)
        duration = draw(st.sampled_from([0.0, 0.001]) | st.floats(0, 20))
        words: Words | None = None
        split = text.split()
        with_words = draw(st.booleans())
        if split and with_words:
            cuts = sorted(draw(st.lists(st.floats(0, 1), min_size=2 * len(split))))
            times = [clock + duration * c for c in cuts]
            words = [(w, times[2 * i], times[2 * i + 1]) for i, w in enumerate(split)]
        found.append(final(text, channel=channel, start=clock, duration=duration, words=words))
        clock += duration + draw(st.sampled_from([0.0]) | st.floats(-3, 3))
    return found


names = st.text(max_size=8).filter(lambda n: "\x00" not in n)


@given(finals_of_a_channel(0), finals_of_a_channel(1), names, names, st.randoms())
@settings(max_examples=300, deadline=None)
def test_any_finals_give_captions_that_parse_in_order_with_every_word(
    caller: list[str], callee: list[str], caller_name: str, callee_name: str, random: Any
) -> None:
    mixed = caller + callee
    random.shuffle(mixed)  # the order received across channels does not matter
    finished = call(*mixed, parameters={"CallerName": caller_name, "CalleeName": callee_name})
    labels = [" ".join(name.split()) for name in speakers(finished.info.custom_parameters)]
    # An SRT reader tells the speakers apart by their labels: neither "A: " may begin the other.
    assume(not f"{labels[0]}: ".startswith(f"{labels[1]}: "))
    assume(not f"{labels[1]}: ".startswith(f"{labels[0]}: "))
    expected = transcript_words(finished)
    for read in (read_webvtt(webvtt(finished)), read_srt(srt(finished), labels)):
        assert len(read) == len(cues(finished))
        assert all(cue.end_ms > cue.start_ms for cue in read)
        assert [cue.start_ms for cue in read] == sorted(cue.start_ms for cue in read)
        assert words_by_channel(read, labels) == expected


@given(finals_of_a_channel(0))
@settings(max_examples=100, deadline=None)
def test_no_cue_has_more_than_two_lines_or_a_long_line_of_several_words(
    caller: list[str],
) -> None:
    for cue in cues(call(*caller)):
        assert 1 <= len(cue.lines) <= 2
        assert all(len(line) <= MAX_LINE_CHARS or " " not in line for line in cue.lines)


# Exact files.


def test_two_speakers_with_escapes_and_overlap_give_these_files() -> None:
    finished = call(
        final(
            "Hi, it's Ann & co.",
            start=0.0,
            duration=2.0,
            words=[
                ("Hi,", 0.1, 0.3),
                ("it's", 0.3, 0.6),
                ("Ann", 0.6, 0.9),
                ("&", 0.9, 1.0),
                ("co.", 1.0, 1.5),
            ],
        ),
        final("a<b --> c", channel=1, start=1.0, duration=1.0),  # no words: the span is shared
        parameters={"CallerName": " Ann &\nBo "},
    )
    assert webvtt(finished) == (
        "WEBVTT\n\n"
        "NOTE callSid CA1\n\n"
        "00:00:00.100 --> 00:00:01.500\n"
        "<v Ann &amp; Bo>Hi, it's Ann &amp; co.\n\n"
        "00:00:01.000 --> 00:00:02.000\n"
        "<v Callee>a&lt;b --&gt; c\n\n"
    )
    assert srt(finished) == (
        "1\n00:00:00,100 --> 00:00:01,500\nAnn & Bo: Hi, it's Ann & co.\n\n"
        "2\n00:00:01,000 --> 00:00:02,000\nCallee: a<b --> c\n\n"
    )


def test_no_words_give_an_empty_file_of_each_format() -> None:
    finished = call(final("   ", start=1.0))
    assert webvtt(finished) == "WEBVTT\n\n"
    assert srt(finished) == ""
    assert read_webvtt(webvtt(finished)) == read_srt(srt(finished)) == []


def test_a_long_final_is_split_at_seven_seconds() -> None:
    text = "one two three four five six seven eight nine ten"
    finished = call(final(text, duration=10.0, words=one_second_words(text)))
    assert [(c.start_ms, c.end_ms, c.lines) for c in cues(finished)] == [
        (0, 7_000, ("one two three four five six seven",)),
        (7_000, 10_000, ("eight nine ten",)),
    ]


def test_a_wordy_final_is_split_into_cues_of_two_lines_of_42_characters() -> None:
    text = " ".join(["abcdefghi"] * 20)  # 4 per line (39 characters), 8 per cue
    words = [("abcdefghi", i / 10, (i + 1) / 10) for i in range(20)]
    finished = call(final(text, duration=2.0, words=words))
    line = " ".join(["abcdefghi"] * 4)
    assert [c.lines for c in cues(finished)] == [(line, line), (line, line), (line,)]
    assert (
        srt(finished).split("\n\n")[0]
        == f"1\n00:00:00,000 --> 00:00:00,800\nCaller: {line}\n{line}"
    )


def test_a_zero_length_word_gets_a_cue_of_the_minimum_length() -> None:
    finished = call(final("Yes.", start=3.0, duration=0.0, words=[("Yes.", 3.0, 3.0)]))
    assert [(c.start_ms, c.end_ms) for c in cues(finished)] == [(3_000, 3_000 + MIN_CUE_MS)]


def test_words_that_do_not_match_the_transcript_give_way_to_its_span() -> None:
    # smart_format may merge words ("twenty five" gives one "25"): times come from the span.
    finished = call(
        final("it is 25 now", start=2.0, duration=1.2, words=one_second_words("it is 25"))
    )
    (cue,) = cues(finished)
    assert (cue.start_ms, cue.end_ms, cue.lines) == (2_000, 3_200, ("it is 25 now",))


def test_hours_are_written_in_full() -> None:
    finished = call(final("late", start=3725.5, duration=0.25))
    assert "01:02:05.500 --> 01:02:05.750" in webvtt(finished)
    assert "01:02:05,500 --> 01:02:05,750" in srt(finished)


def test_the_fake_deepgrams_results_read_back_with_their_word_times() -> None:
    messages = [
        results_message(
            transcript=text,
            channel=channel,
            channels=2,
            start=start,
            duration=2.0,
            is_final=True,
            speech_final=True,
            from_finalize=False,
            request_id="req",  # words: the fake's, sharing the span
        )
        for text, channel, start in [("hello there", 0, 0.0), ("hi", 1, 1.0)]
    ]
    finished = call(*(json.dumps(m) for m in messages))
    assert [(r.start_ms, r.end_ms, r.speaker, r.text) for r in read_webvtt(webvtt(finished))] == [
        (0, 2_000, "Caller", "hello there"),
        (1_000, 3_000, "Callee", "hi"),
    ]


def test_a_final_without_a_start_starts_at_zero_and_words_without_times_give_way() -> None:
    no_start = final("odd", start=0.5).replace('"start": 0.5', '"start": "soon"')
    no_times = final("big", channel=1, start=1.0, words=[("big", 1.0, 1.5)]).replace(
        '"end": 1.5', '"end": "later"'
    )
    assert [(c.start_ms, c.end_ms, c.lines) for c in cues(call(no_start, no_times))] == [
        (0, 1_000, ("odd",)),
        (1_000, 2_000, ("big",)),
    ]
