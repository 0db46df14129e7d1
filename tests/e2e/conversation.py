"""A scripted two-party call for the browser tests: who speaks in each Deepgram window, the
Twilio messages that carry it (sent up to a chosen time, so a test can hold the call between
an interim and a final result), and the conversation the viewer must then show."""

from __future__ import annotations

from dataclasses import dataclass, field

from twilio_dg_proxy.engine.synthetic import transcript_for
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SILENCE, SimulatedCall, pattern

from ..integration.helpers import TwilioPeer
from .conftest import RESULT_MS

WINDOW_BYTES = RESULT_MS * 8  # mu-law bytes of one track in one window (8 per ms)
TRACKS: tuple[Track, Track] = ("inbound", "outbound")  # channel 0 caller, 1 callee


@dataclass
class Conversation:
    """`turns` has one letter per window of `RESULT_MS`: `C` the caller speaks, `E` the
    callee, `B` both, `-` neither. The fake Deepgram transcribes each speaking window as
    `ch<channel> w<window> <digest>` and closes an utterance with `speech_final` on windows
    3, 7, 11... or on the first silent window after speech."""

    turns: str
    call: SimulatedCall = field(default_factory=SimulatedCall)

    def __post_init__(self) -> None:
        tracks: dict[Track, bytearray] = {track: bytearray() for track in TRACKS}
        for window, turn in enumerate(self.turns):
            for channel, track in enumerate(TRACKS):
                speaks = turn == "B" or turn == "CE"[channel]
                offset = window * WINDOW_BYTES
                data = pattern(track, WINDOW_BYTES, offset=offset) if speaks else None
                tracks[track] += data or bytes([SILENCE]) * WINDOW_BYTES
        self.audio = {track: bytes(data) for track, data in tracks.items()}
        self.messages = self.call.frames(self.audio)
        self.sent = 0

    def window_text(self, channel: int, window: int) -> str:
        """What the fake transcribes for one channel's window ("" for silence)."""
        track = TRACKS[channel]
        audio = self.audio[track][window * WINDOW_BYTES : (window + 1) * WINDOW_BYTES]
        return transcript_for(audio, channel=channel, window=window)

    def lines(self, windows: int | None = None) -> list[tuple[int, str]]:
        """The utterances of the first `windows` windows (all by default) as (channel, text),
        in order of start, as the viewer shows them once every one is final."""
        windows = len(self.turns) if windows is None else windows
        found: list[tuple[int, int, str]] = []  # (first window, channel, text)
        for channel in (0, 1):
            words: list[str] = []
            first = 0
            for window in range(windows):
                text = self.window_text(channel, window)
                if text:
                    if not words:
                        first = window
                    words.append(text)
                if words and (not text or window % 4 == 3):
                    found.append((first, channel, " ".join(words)))
                    words = []
            if words:
                found.append((first, channel, " ".join(words)))
        return [(channel, text) for _, channel, text in sorted(found)]

    async def send_until(self, twilio: TwilioPeer, seconds: float) -> None:
        """Send every media message stamped before `seconds` not sent yet."""
        while self.sent < len(self.messages) and self.messages[self.sent][0] < seconds:
            await twilio.ws.send(self.messages[self.sent][1])
            self.sent += 1

    async def send_windows(self, twilio: TwilioPeer, windows: int) -> None:
        """Send the audio of the first `windows` windows and a little more, so the last one's
        final result comes, but not yet the next one's interim."""
        await self.send_until(twilio, (windows * RESULT_MS + RESULT_MS * 0.3) / 1000)

    async def send_rest(self, twilio: TwilioPeer) -> None:
        """Send what is left of the audio."""
        await self.send_until(twilio, float("inf"))
