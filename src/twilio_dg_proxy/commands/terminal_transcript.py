"""A call's transcript in the terminal: Deepgram messages in, text to write out (pure).

`Utterances` joins Deepgram's finals into utterances per channel (PROTOCOLS.md);
`TranscriptRenderer` turns them into Caller/Callee lines, with the utterances in progress
rewritten in place on a terminal. The `demo` and `watch` commands print with it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ..deepgram_protocol import result_transcript

__all__ = ["LABELS", "TranscriptRenderer", "Utterances"]

#: Labels of the channels: Deepgram's channel 0 is Twilio's inbound track (the caller).
LABELS: Final = ("Caller", "Callee")
_BOLD, _DIM, _RESET = "\x1b[1m", "\x1b[2m", "\x1b[0m"


@dataclass(slots=True)
class _Open:
    """A channel's utterance in progress: its finals so far and the latest interim."""

    finals: list[str] = field(default_factory=list)
    interim: str = ""


class Utterances:
    """Deepgram messages in, completed utterances out, per channel (PROTOCOLS.md).

    An interim (`is_final: false`) replaces the previous one; each final covers the audio
    since the previous final, so an utterance is the finals joined until one has
    `speech_final: true`, or an `UtteranceEnd` for that channel. Empty transcripts add
    nothing. Messages that are not JSON objects, or of other types, are ignored.
    """

    def __init__(self) -> None:
        self._open: dict[int, _Open] = {}

    def feed(self, text: str) -> list[tuple[int, str]]:
        """Take one message; return the utterances it completes as (channel, text)."""
        try:
            message = json.loads(text)
        except ValueError:
            return []
        if not isinstance(message, dict):
            return []
        kind = message.get("type")
        if kind == "Results":
            return self._results(message)
        if kind == "UtteranceEnd":
            channel = _channel(message.get("channel"))
            return self._close(channel) if channel is not None else []
        return []

    def _results(self, message: Mapping[str, Any]) -> list[tuple[int, str]]:
        channel = _channel(message.get("channel_index"))
        if channel is None:
            return []
        transcript = result_transcript(message)
        state = self._open.setdefault(channel, _Open())
        if not message.get("is_final"):
            state.interim = transcript
            return []
        state.interim = ""  # the final covers the audio the interims guessed at
        if transcript:
            state.finals.append(transcript)
        if message.get("speech_final"):
            return self._close(channel)
        return []

    def _close(self, channel: int) -> list[tuple[int, str]]:
        state = self._open.pop(channel, None)
        if state is None or not state.finals:
            return []
        return [(channel, " ".join(state.finals))]

    def in_progress(self) -> list[tuple[int, str, str]]:
        """The utterances in progress, in channel order: (channel, finals so far, interim)."""
        return [
            (channel, " ".join(state.finals), state.interim)
            for channel, state in sorted(self._open.items())
            if state.finals or state.interim
        ]

    def flush(self) -> list[tuple[int, str]]:
        """End every utterance in progress (the call is over); return those with text."""
        done: list[tuple[int, str]] = []
        for channel in sorted(self._open):
            done += self._close(channel)
        return done


def _channel(value: object) -> int | None:
    """The channel of `channel_index` / `channel` ([channel, count]), or None if malformed."""
    if isinstance(value, list) and value and isinstance(value[0], int):
        return value[0]
    return None


class TranscriptRenderer:
    """Deepgram messages in, the exact text to write to the terminal out.

    Finished utterances become lines, ``Caller: ...`` or ``Callee: ...`` (labels from
    `labels` by channel). With `tty`, the utterances in progress (finals so far, then the
    interim, dimmed) are shown below them, one line per channel, rewritten in place with ANSI
    escapes and cut to `width` columns so that they never wrap; without `tty`, only
    finished utterances are written, as plain lines.
    """

    def __init__(self, *, tty: bool, width: int = 80, labels: Sequence[str] = LABELS) -> None:
        self.tty = tty
        self.width = width
        self.labels = tuple(labels)
        self.utterances = Utterances()
        self._shown: list[str] = []  # the live lines on screen, below the finished ones

    def label(self, channel: int) -> str:
        """The speaker's name for `channel`."""
        return self.labels[channel] if 0 <= channel < len(self.labels) else f"Channel {channel}"

    def feed(self, text: str) -> str:
        """Take one message from the proxy; return what to write ("" when nothing changed)."""
        return self._render(self.utterances.feed(text))

    def finish(self) -> str:
        """End the utterances in progress; return what to write. The cursor ends on a new line."""
        return self._render(self.utterances.flush(), final=True)

    def _line(self, channel: int, text: str) -> str:
        label = f"{self.label(channel)}:"
        return f"{_BOLD}{label}{_RESET} {text}\n" if self.tty else f"{label} {text}\n"

    def _render(self, done: list[tuple[int, str]], *, final: bool = False) -> str:
        lines = "".join(self._line(channel, text) for channel, text in done)
        if not self.tty:
            return lines
        live = [] if final else [self._live(*state) for state in self.utterances.in_progress()]
        if not done and live == self._shown:
            return ""
        out = self._erase() + lines + "\n".join(live)
        self._shown = live
        return out

    def _erase(self) -> str:
        """Move to the first live line and clear to the end of the screen."""
        if not self._shown:
            return ""
        up = len(self._shown) - 1
        return "\r" + (f"\x1b[{up}A" if up else "") + "\x1b[J"

    def _live(self, channel: int, finals: str, interim: str) -> str:
        """One utterance in progress, cut from the left to fit in `width` - 1 columns."""
        label = f"{self.label(channel)}:"
        room = max(self.width - 2 - len(label), 10)
        text = f"{finals} {interim}" if finals and interim else finals or interim
        if len(text) > room:
            text = "…" + text[len(text) - room + 1 :]
        guess = min(len(interim), len(text))  # the interim is the tail: dim it
        kept, tail = text[: len(text) - guess], text[len(text) - guess :]
        return f"{_BOLD}{label}{_RESET} {kept}" + (f"{_DIM}{tail}{_RESET}" if tail else "")
