"""Cutting one channel's audio into utterances: an energy VAD with Deepgram-style endpointing.

`Segmenter` is a sans-I/O state machine for one channel of 8 kHz audio: `push(samples)` feeds
it and returns the events that audio completed; `pending()` is the utterance in progress (for
interim results); `finalize()` and `close()` cut what is pending on request. It reads no clock:
its time is the channel's sample count.

How it decides: audio is judged in 20 ms frames. A frame is speech when its energy is above
both an absolute floor and a margin over the tracked noise floor (which follows the quietest
recent frames down at once and creeps up slowly, so a steady background does not hold an
utterance open for ever). `min_speech_ms` of speech in a row starts an utterance; its audio
begins `preroll_ms` earlier so that soft word onsets reach the recogniser. `endpointing_ms` of
non-speech ends it: the window since the previous cut becomes one `Segment` (one final
``Results`` with ``speech_final``). An utterance longer than `max_utterance_ms` is cut at its
quietest frame of the last second (a final without ``speech_final``; the utterance goes on),
because Whisper reads at most 30 s and long windows make interim decodes slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, TypeAlias

import numpy as np

from .audio import Samples

__all__ = [
    "DEFAULT_ENDPOINTING_MS",
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "Event",
    "Pending",
    "Segment",
    "Segmenter",
    "SegmenterConfig",
    "SpeechStarted",
    "UtteranceGap",
]

SAMPLE_RATE: Final = 8000
FRAME_SAMPLES: Final = 160
"""20 ms at 8 kHz: the VAD's unit of decision (Twilio's frame size too)."""
DEFAULT_ENDPOINTING_MS: Final = 600
"""Silence that ends an utterance unless the query says otherwise. Deepgram's default is
10 ms, which suits a streaming model; Whisper transcribes whole phrases far better."""
_SILENT_DB: Final = -100.0  # the energy given to digital silence (log of 0 is -inf)
_NOISE_RISE_DB: Final = 0.01  # per frame: 0.5 dB/s, so a steady hum is learnt in ~30 s
_QUIET_SEARCH_FRAMES: Final = 50  # a forced cut looks for the quietest frame of the last 1 s
_EMPTY: Final = np.zeros(0, dtype=np.float32)


def _frames(ms: int) -> int:
    return max(1, ms * SAMPLE_RATE // 1000 // FRAME_SAMPLES)


@dataclass(frozen=True, slots=True)
class SegmenterConfig:
    """How a `Segmenter` finds utterances. Durations in milliseconds.

    `endpointing_ms`: non-speech that ends an utterance (None: never end one on silence;
    finals then come only from `max_utterance_ms`, `finalize` and `close`).
    `utterance_end_ms`: non-speech after the last speech after which an `UtteranceGap` is due
    (None: never); counted from the end of speech, and never before the endpoint.
    `min_decode_speech_ms`: a window with less speech than this is not worth decoding (a click,
    a cough); its final has an empty transcript.
    """

    endpointing_ms: int | None = DEFAULT_ENDPOINTING_MS
    utterance_end_ms: int | None = None
    preroll_ms: int = 300
    min_speech_ms: int = 60
    min_decode_speech_ms: int = 200
    max_utterance_ms: int = 15_000
    threshold_db: float = -45.0
    margin_db: float = 12.0

    def __post_init__(self) -> None:
        for name in ("preroll_ms", "min_speech_ms", "min_decode_speech_ms", "max_utterance_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_utterance_ms < 2_000:
            raise ValueError("max_utterance_ms must be at least 2000")


@dataclass(frozen=True, slots=True)
class Segment:
    """The channel's audio from the previous cut to this one: one final ``Results``.

    Positions are sample counts on the channel's timeline. `audio` is what to decode (the
    speech since the later of the window start and the utterance's pre-roll) and starts at
    `audio_start`; it is empty when the window holds too little speech to decode.
    """

    start: int
    end: int
    audio_start: int
    audio: Samples
    speech_final: bool
    from_finalize: bool

    @property
    def has_speech(self) -> bool:
        """Whether `audio` is worth decoding (else the transcript is empty)."""
        return len(self.audio) > 0


@dataclass(frozen=True, slots=True)
class Pending:
    """The window in progress when it holds speech: what an interim ``Results`` covers.

    `start`..`end` is the window (from the previous cut to the audio received so far);
    `audio` starts at `audio_start`.
    """

    start: int
    end: int
    audio_start: int
    audio: Samples


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    """Speech began at sample `at` (Deepgram's ``SpeechStarted``, with ``vad_events``)."""

    at: int


@dataclass(frozen=True, slots=True)
class UtteranceGap:
    """`utterance_end_ms` of non-speech followed the last speech, at sample `at`
    (Deepgram's ``UtteranceEnd``)."""

    at: int


Event: TypeAlias = Segment | SpeechStarted | UtteranceGap


class _Tape:
    """The retained samples of a channel: `start`..`end` on its timeline."""

    def __init__(self) -> None:
        self._chunks: list[Samples] = []
        self.start = 0
        self.end = 0

    def append(self, samples: Samples) -> None:
        self._chunks.append(samples)
        self.end += len(samples)

    def read(self, start: int, end: int) -> Samples:
        """Return a copy of samples `start`..`end` (clipped to what is retained)."""
        whole = self._compact()
        return whole[max(0, start - self.start) : max(0, end - self.start)].copy()

    def trim(self, start: int) -> None:
        """Forget the samples before `start` (amortised: only when they are worth a copy)."""
        start = min(start, self.end)
        if start - self.start > max(self.end - start, 4 * FRAME_SAMPLES):
            self._chunks = [self._compact()[start - self.start :].copy()]
            self.start = start

    def _compact(self) -> Samples:
        if len(self._chunks) != 1:
            self._chunks = [np.concatenate(self._chunks) if self._chunks else _EMPTY]
        return self._chunks[0]


class Segmenter:
    """Utterances of one channel of 8 kHz float audio (see the module's docstring)."""

    def __init__(self, config: SegmenterConfig | None = None) -> None:
        self.config = config = config or SegmenterConfig()
        self._endpoint = _frames(config.endpointing_ms) if config.endpointing_ms else None
        # Without endpointing, speech still "ends" (for UtteranceGap and SpeechStarted) after
        # the default endpoint's silence; it just does not cut.
        self._speech_end = self._endpoint or _frames(DEFAULT_ENDPOINTING_MS)
        self._gap = None
        if config.utterance_end_ms is not None:
            self._gap = max(_frames(config.utterance_end_ms), self._speech_end)
        self._onset = _frames(config.min_speech_ms)
        self._preroll = config.preroll_ms * SAMPLE_RATE // 1000
        self._min_decode = config.min_decode_speech_ms * SAMPLE_RATE // 1000
        self._max_window = config.max_utterance_ms * SAMPLE_RATE // 1000
        self._tape = _Tape()
        self._tail = _EMPTY  # samples not yet making a whole frame
        self._noise_db = _SILENT_DB
        self._window_start = 0  # where the next final starts (the previous cut)
        self._in_speech = False  # an utterance is open
        self._speech_run = 0  # speech frames in a row (before an onset)
        self._silence_run = 0  # non-speech frames in a row (inside an utterance)
        self._audio_start: int | None = None  # where the window's decodable audio starts
        # Per frame of the window since `_window_start`: energy (dB) and whether it was speech.
        self._frame_db: list[float] = []
        self._frame_speech: list[bool] = []
        self._gap_due = False  # speech since the last UtteranceGap

    @property
    def position(self) -> int:
        """Samples received so far (those in the partial frame included)."""
        return self._tape.end + len(self._tail)

    def push(self, samples: Samples) -> list[Event]:
        """Take the channel's next samples; return the events they complete, in order."""
        if len(self._tail):
            samples = np.concatenate((self._tail, samples))
        whole = len(samples) - len(samples) % FRAME_SAMPLES
        self._tail = samples[whole:].copy()
        if whole == 0:
            return []
        frames = samples[:whole].reshape(-1, FRAME_SAMPLES)
        energies = 10 * np.log10(np.mean(np.square(frames, dtype=np.float64), axis=1) + 1e-10)
        events: list[Event] = []
        for frame, db in zip(frames, energies.tolist(), strict=True):
            self._tape.append(frame)
            self._frame(float(db), events)
        self._forget()
        return events

    def pending(self) -> Pending | None:
        """The window in progress when it holds enough speech to decode, else None."""
        if self._audio_start is None or self._speech_samples() < self._min_decode:
            return None
        end = self._tape.end
        return Pending(
            start=self._window_start,
            end=end,
            audio_start=self._audio_start,
            audio=self._tape.read(self._audio_start, end),
        )

    def pending_samples(self) -> int:
        """The length of `pending()`'s audio, without copying it (0 when it would be None)."""
        if self._audio_start is None or self._speech_samples() < self._min_decode:
            return 0
        return self._tape.end - self._audio_start

    def finalize(self) -> Segment | None:
        """Cut everything received into a final marked ``from_finalize`` (Deepgram's Finalize).

        None when nothing arrived since the previous cut. An open utterance stays open: its
        ``speech_final`` comes with a later final.
        """
        self._flush_tail()
        if self._tape.end == self._window_start:
            return None
        return self._cut(self._tape.end, speech_final=False, from_finalize=True)

    def close(self) -> Segment | None:
        """Cut everything received into a last final (Deepgram's CloseStream).

        Its ``speech_final`` is set when it ends an utterance. None when nothing arrived since
        the previous cut.
        """
        self._flush_tail()
        if self._tape.end == self._window_start:
            return None
        speech_final = self._in_speech or self._speech_samples() > 0
        self._in_speech = False
        return self._cut(self._tape.end, speech_final=speech_final, from_finalize=False)

    # Internals.

    def _frame(self, db: float, events: list[Event]) -> None:
        """Judge one frame, just appended to the tape, and update the state."""
        config = self.config
        speech = db > max(config.threshold_db, self._noise_db + config.margin_db)
        self._noise_db = db if db < self._noise_db else self._noise_db + _NOISE_RISE_DB
        self._frame_db.append(db)
        self._frame_speech.append(speech)
        end = self._tape.end
        if not self._in_speech:
            self._speech_run = self._speech_run + 1 if speech else 0
            if self._speech_run >= self._onset:
                onset = end - self._speech_run * FRAME_SAMPLES
                self._in_speech = True
                self._silence_run = 0
                self._gap_due = True
                if self._audio_start is None:
                    self._audio_start = max(self._window_start, onset - self._preroll)
                events.append(SpeechStarted(onset))
            elif self._gap is not None and self._gap_due:
                self._silence_run += 1
                if self._silence_run >= self._gap:
                    self._gap_due = False
                    events.append(UtteranceGap(end))
        elif speech:
            self._silence_run = 0
        else:
            self._silence_run += 1
            if self._silence_run >= self._speech_end:
                self._in_speech = False
                self._speech_run = 0
                if self._endpoint is not None:
                    events.append(self._cut(end, speech_final=True, from_finalize=False))
                if self._gap is not None and self._silence_run >= self._gap:
                    self._gap_due = False
                    events.append(UtteranceGap(end))
                return
        if end - self._window_start >= self._max_window:
            events.append(self._cut(self._quiet_point(), speech_final=False, from_finalize=False))

    def _quiet_point(self) -> int:
        """The end of the quietest frame of the last second: where a forced cut hurts least."""
        recent = self._frame_db[-_QUIET_SEARCH_FRAMES:]
        quietest = len(self._frame_db) - len(recent) + int(np.argmin(recent))
        return self._window_start + (quietest + 1) * FRAME_SAMPLES

    def _speech_samples(self) -> int:
        return sum(self._frame_speech) * FRAME_SAMPLES

    def _cut(self, at: int, *, speech_final: bool, from_finalize: bool) -> Segment:
        """Return the window up to `at` as a Segment and start the next window there."""
        frames_before = (at - self._window_start + FRAME_SAMPLES - 1) // FRAME_SAMPLES
        speech = sum(self._frame_speech[:frames_before]) * FRAME_SAMPLES
        audio = _EMPTY
        if self._audio_start is not None and speech >= self._min_decode:
            audio = self._tape.read(self._audio_start, at)
        segment = Segment(
            start=self._window_start,
            end=at,
            audio_start=self._audio_start if self._audio_start is not None else at,
            audio=audio,
            speech_final=speech_final,
            from_finalize=from_finalize,
        )
        self._window_start = at
        del self._frame_db[:frames_before]
        del self._frame_speech[:frames_before]
        # An utterance still open goes on from the cut; otherwise the next onset decides.
        self._audio_start = at if self._in_speech else None
        self._forget()
        return segment

    def _forget(self) -> None:
        """Drop audio no final or pre-roll can need any more."""
        if self._audio_start is not None:
            self._tape.trim(self._audio_start)
        else:
            self._tape.trim(max(self._window_start, self._tape.end - self._preroll))

    def _flush_tail(self) -> None:
        """Put the partial frame on the tape (as non-speech) so a cut includes it."""
        if len(self._tail):
            self._tape.append(self._tail)
            self._frame_db.append(_SILENT_DB)
            self._frame_speech.append(False)
            self._tail = _EMPTY
