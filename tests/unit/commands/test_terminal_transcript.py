"""The demo's transcript: Deepgram messages into utterances, and into terminal text."""

from __future__ import annotations

import json
import re

import pytest

from twilio_dg_proxy.commands.terminal_transcript import TranscriptRenderer, Utterances

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def results(
    channel: int,
    transcript: str,
    *,
    final: bool = True,
    speech_final: bool = False,
    channels: int = 2,
) -> str:
    """A Deepgram `Results` message, as the proxy forwards it (only the fields read)."""
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, channels],
            "is_final": final,
            "speech_final": speech_final,
            "start": 0.0,
            "duration": 1.0,
            "channel": {"alternatives": [{"transcript": transcript, "words": []}]},
        }
    )


def interim(channel: int, transcript: str) -> str:
    return results(channel, transcript, final=False)


class Screen:
    """A tiny terminal: applies the renderer's output (text, \\r, \\n, cursor up, clear to end)
    to a list of lines, so tests check what a person sees rather than escape sequences."""

    def __init__(self) -> None:
        self.lines = [""]
        self.row = 0

    def write(self, text: str) -> None:
        for token in re.split(r"(\x1b\[[0-9;]*[A-Za-z]|\r|\n)", text):
            if not token:
                continue
            if token == "\r":
                continue  # lines are rewritten whole below: the column does not matter
            if token == "\n":
                self.row += 1
                if self.row == len(self.lines):
                    self.lines.append("")
            elif token.endswith("A"):
                self.row -= int(token[2:-1] or 1)
            elif token == "\x1b[J":
                del self.lines[self.row + 1 :]
                self.lines[self.row] = ""
            elif token.startswith("\x1b["):
                pass  # colours
            else:
                self.lines[self.row] += token

    @property
    def text(self) -> list[str]:
        return [line for line in self.lines if line]


# --- Utterances ---------------------------------------------------------------------------


def test_finals_are_joined_until_speech_final() -> None:
    u = Utterances()
    assert u.feed(results(0, "Hello, I would like")) == []
    assert u.feed(results(0, "to book a table.", speech_final=True)) == [
        (0, "Hello, I would like to book a table.")
    ]
    assert u.in_progress() == []


def test_interims_are_replaced_and_dropped_by_the_final() -> None:
    u = Utterances()
    u.feed(interim(1, "how"))
    u.feed(interim(1, "how many"))
    assert u.in_progress() == [(1, "", "how many")]
    u.feed(results(1, "How many people?"))
    assert u.in_progress() == [(1, "How many people?", "")]
    u.feed(interim(1, "will"))
    assert u.in_progress() == [(1, "How many people?", "will")]


def test_channels_build_their_utterances_independently() -> None:
    u = Utterances()
    u.feed(results(0, "one"))
    u.feed(results(1, "two"))
    assert u.feed(results(1, "", speech_final=True)) == [(1, "two")]
    assert u.feed(results(0, "three", speech_final=True)) == [(0, "one three")]


def test_an_empty_speech_final_ends_the_utterance_and_empty_finals_add_nothing() -> None:
    u = Utterances()
    u.feed(results(0, ""))
    u.feed(results(0, "  Goodbye.  "))
    u.feed(results(0, ""))
    assert u.feed(results(0, "", speech_final=True)) == [(0, "Goodbye.")]
    assert u.feed(results(0, "", speech_final=True)) == []  # nothing was open


def test_utterance_end_closes_the_channels_utterance() -> None:
    u = Utterances()
    u.feed(results(0, "left"))
    u.feed(results(1, "right"))
    end = json.dumps({"type": "UtteranceEnd", "channel": [1, 2], "last_word_end": 2.0})
    assert u.feed(end) == [(1, "right")]
    assert u.in_progress() == [(0, "left", "")]


def test_flush_ends_what_is_open_in_channel_order() -> None:
    u = Utterances()
    u.feed(results(1, "callee"))
    u.feed(results(0, "caller"))
    u.feed(interim(0, "and more"))
    assert u.flush() == [(0, "caller"), (1, "callee")]
    assert u.flush() == []


@pytest.mark.parametrize(
    "message",
    [
        "close",
        "[]",
        "{}",
        json.dumps({"type": "Metadata", "request_id": "x", "duration": 1.0}),
        json.dumps({"type": "SpeechStarted", "channel": [0, 2]}),
        json.dumps({"type": "Results", "channel_index": "zero", "is_final": True}),
        json.dumps({"type": "Results", "channel_index": [0, 2], "is_final": True}),
        json.dumps({"type": "UtteranceEnd"}),
    ],
)
def test_other_messages_and_malformed_ones_are_ignored(message: str) -> None:
    u = Utterances()
    assert u.feed(message) == []
    assert u.in_progress() == []


# --- TranscriptRenderer without a terminal -------------------------------------------------


def test_without_a_terminal_only_finished_utterances_are_written_as_plain_lines() -> None:
    r = TranscriptRenderer(tty=False)
    assert r.feed(interim(0, "hel")) == ""
    assert r.feed(results(0, "Hello.")) == ""
    assert r.feed(results(0, "", speech_final=True)) == "Caller: Hello.\n"
    assert r.feed(results(1, "Hi there.", speech_final=True)) == "Callee: Hi there.\n"
    assert r.feed(results(1, "Bye.")) == ""
    assert r.finish() == "Callee: Bye.\n"


def test_channels_beyond_the_labels_are_numbered() -> None:
    r = TranscriptRenderer(tty=False)
    assert r.feed(results(2, "x", speech_final=True, channels=3)) == "Channel 2: x\n"


def test_a_mono_call_is_the_caller() -> None:
    r = TranscriptRenderer(tty=False)
    assert r.feed(results(0, "solo", speech_final=True, channels=1)) == "Caller: solo\n"


# --- TranscriptRenderer on a terminal --------------------------------------------------------


def test_on_a_terminal_interims_update_in_place_and_finished_lines_stay() -> None:
    r = TranscriptRenderer(tty=True, width=80)
    screen = Screen()
    screen.write(r.feed(interim(0, "hello")))
    assert screen.text == ["Caller: hello"]
    screen.write(r.feed(interim(0, "hello I would")))
    assert screen.text == ["Caller: hello I would"]
    screen.write(r.feed(results(0, "Hello, I would like")))
    screen.write(r.feed(interim(0, "to book")))
    assert screen.text == ["Caller: Hello, I would like to book"]
    screen.write(r.feed(results(0, "to book a table.", speech_final=True)))
    assert screen.text == ["Caller: Hello, I would like to book a table."]
    screen.write(r.feed(interim(1, "sure")))
    assert screen.text == ["Caller: Hello, I would like to book a table.", "Callee: sure"]
    screen.write(r.feed(results(1, "Sure.", speech_final=True)))
    screen.write(r.finish())
    assert screen.text == ["Caller: Hello, I would like to book a table.", "Callee: Sure."]
    assert screen.lines[-1] == ""  # the cursor is left on a fresh line


def test_two_channels_in_progress_get_one_live_line_each() -> None:
    r = TranscriptRenderer(tty=True, width=80)
    screen = Screen()
    screen.write(r.feed(interim(1, "right")))
    screen.write(r.feed(interim(0, "left")))
    assert screen.text == ["Caller: left", "Callee: right"]
    screen.write(r.feed(results(0, "Left done.", speech_final=True)))
    assert screen.text == ["Caller: Left done.", "Callee: right"]
    screen.write(r.feed(interim(1, "right again")))
    assert screen.text == ["Caller: Left done.", "Callee: right again"]


def test_the_interim_is_dimmed_and_the_labels_bold() -> None:
    r = TranscriptRenderer(tty=True)
    r.feed(results(0, "kept"))
    out = r.feed(interim(0, "guess"))
    assert "\x1b[1mCaller:\x1b[0m kept \x1b[2mguess\x1b[0m" in out


def test_nothing_is_written_when_nothing_visible_changed() -> None:
    r = TranscriptRenderer(tty=True)
    r.feed(interim(0, "same"))
    assert r.feed(interim(0, "same")) == ""
    assert r.feed(json.dumps({"type": "Metadata"})) == ""


def test_live_lines_are_cut_from_the_left_to_never_wrap() -> None:
    r = TranscriptRenderer(tty=True, width=30)
    r.feed(results(0, "one two three four five six seven"))
    out = r.feed(interim(0, "eight nine"))
    line = ANSI.sub("", out.split("\x1b[J")[-1])
    assert len(line) == 29  # width - 1: writing the last column would wrap on some terminals
    assert line.startswith("Caller: …") and line.endswith("seven eight nine")


def test_finished_lines_are_never_cut() -> None:
    r = TranscriptRenderer(tty=True, width=20)
    text = "a long utterance that is wider than the terminal"
    out = r.feed(results(0, text, speech_final=True))
    assert text in ANSI.sub("", out)
