"""A call's transcript after the call (pure): what is kept of each call streamed here, and
how it reads.

`Recorder` is one of the hub's sinks (`hub.CallSink`): it tells its listeners (the store's
writer, the webhooks) of each call streamed by this instance as it starts, of each of its
final results as it arrives (within `max_bytes` per call), and, when it ends, hands them a
`FinishedCall` with the Deepgram request ids. It keeps a call's finals in memory for the
whole call only while a listener `needs_finals` (the webhooks' `call.ended` carries the
whole transcript); the store writes them as they come. `segments` turns the finals into
speaker-labelled lines in time order across both channels, the base of every format
(`transcript_json`, `transcript_text`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeGuard

from . import json_loads
from .deepgram_protocol import Kind, result_transcript
from .deepgram_protocol import is_final_with_text as is_final_with_text
from .hub import Ending
from .viewer_protocol import CallInfo

#: Channel names: Deepgram's channel 0 is Twilio's inbound track (the caller).
DEFAULT_SPEAKERS = ("Caller", "Callee")
#: Custom parameters that name the speakers instead (as the viewer does).
SPEAKER_PARAMETERS = ("CallerName", "CalleeName")
DEFAULT_MAX_BYTES = 8 << 20


@dataclass(frozen=True, slots=True)
class FinishedCall:
    """A call as stored: its info, how and when it ended, the Deepgram request ids of its
    streams, and its final results (Deepgram's JSON, verbatim, in the order received;
    `truncated` if some were not kept)."""

    info: CallInfo
    ended_at_ms: int
    end_code: int
    end_reason: str
    request_ids: tuple[str, ...] = ()
    finals: tuple[str, ...] = ()
    truncated: bool = False

    def summary(self) -> dict[str, Any]:
        """The call without its transcript, as the API and webhooks show it."""
        info = self.info.to_json()
        return info | {
            "endedAt": self.ended_at_ms,
            "durationMs": max(0, self.ended_at_ms - self.info.started_at_ms),
            "endCode": self.end_code,
            "endReason": self.end_reason,
            "requestIds": list(self.request_ids),
            "transcriptTruncated": self.truncated,
        }


class TranscriptListener(Protocol):
    """What consumes the recorder's output; methods must not await (queue the work).
    `needs_finals`: whether `call_finished` needs the call's whole transcript (its
    `finals`); if no listener does, the recorder keeps none and `finals` is empty."""

    @property
    def needs_finals(self) -> bool: ...

    def call_started(self, info: CallInfo) -> None: ...
    def final(self, call_sid: str, text: str) -> None: ...
    def call_finished(self, call: FinishedCall) -> None: ...


@dataclass(slots=True)
class _Recording:
    info: CallInfo
    finals: list[str] | None  # kept only if a listener needs them at the end
    request_ids: dict[str, None] = field(default_factory=dict)  # ordered set
    size: int = 0
    truncated: bool = False


class Recorder:
    """The hub's sink that records each call streamed here (see the module's docstring)."""

    def __init__(
        self,
        clock_ms: Callable[[], int],
        listeners: Iterable[TranscriptListener] = (),
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.clock_ms = clock_ms
        self.listeners = list(listeners)
        self.max_bytes = max_bytes
        self.truncated_calls = 0  # calls whose finals went beyond max_bytes
        self._calls: dict[str, _Recording] = {}

    def call_opened(self, info: CallInfo) -> None:
        keep = any(listener.needs_finals for listener in self.listeners)
        self._calls[info.call_sid] = _Recording(info, [] if keep else None)
        for listener in self.listeners:
            listener.call_started(info)

    def message(self, call_sid: str, text: str, kind: Kind) -> None:
        recording = self._calls.get(call_sid)
        if recording is None:
            return
        if kind.request_id:
            recording.request_ids[kind.request_id] = None
        if not kind.final_text:
            return
        if recording.size + len(text) > self.max_bytes:
            if not recording.truncated:
                recording.truncated = True
                self.truncated_calls += 1
            return
        if recording.finals is not None:
            recording.finals.append(text)
        recording.size += len(text)
        for listener in self.listeners:
            listener.final(call_sid, text)

    def call_ended(self, call_sid: str, ending: Ending) -> None:
        recording = self._calls.pop(call_sid, None)
        if recording is None:
            return
        finished = FinishedCall(
            recording.info,
            self.clock_ms(),
            int(ending.code),
            ending.reason,
            tuple(recording.request_ids),
            tuple(recording.finals or ()),
            recording.truncated,
        )
        for listener in self.listeners:
            listener.call_finished(finished)


# How a transcript reads.


@dataclass(frozen=True, slots=True)
class Segment:
    """One final result as a line: who said what, from `start` to `end` seconds into the
    call (on the call's timeline: the proxy shifts Deepgram's times across reconnects)."""

    start: float
    end: float
    channel: int
    speaker: str
    text: str


def speakers(parameters: Mapping[str, str]) -> tuple[str, ...]:
    """The channels' names: `CallerName` / `CalleeName` custom parameters, else
    Caller / Callee."""
    return tuple(
        (parameters.get(param) or "").strip() or default
        for param, default in zip(SPEAKER_PARAMETERS, DEFAULT_SPEAKERS, strict=True)
    )


def speaker_name(names: Sequence[str], channel: int) -> str:
    return names[channel] if 0 <= channel < len(names) else f"Channel {channel}"


def segments(call: FinishedCall) -> list[Segment]:
    """The call's finals as segments, in time order across channels (ties: channel 0
    first, then the order received)."""
    names = speakers(call.info.custom_parameters)
    found: list[Segment] = []
    for text in call.finals:
        message = json_loads.object_or_none(text)
        if message is None or not is_final_with_text(message):
            continue
        channel = channel_of(message)
        start = seconds(message.get("start"))
        end = start + max(0.0, seconds(message.get("duration")))
        found.append(
            Segment(start, end, channel, speaker_name(names, channel), result_transcript(message))
        )
    return sorted(found, key=lambda s: (s.start, s.channel))


def channel_of(message: Mapping[str, Any]) -> int:
    """The channel of a `Results` message (`channel_index`: [channel, count]); 0 if
    malformed."""
    index = message.get("channel_index")
    if isinstance(index, list) and index and type(index[0]) is int:
        return index[0]
    return 0


def seconds(value: object) -> float:
    """A time in seconds: a finite JSON number, else 0 (never infinity, NaN or a bool)."""
    return float(value) if is_time(value) else 0.0


def is_time(value: object) -> TypeGuard[int | float]:
    """Whether `value` is a finite JSON number (within a float's range)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:  # an int beyond a float's range
        return False


def transcript_json(call: FinishedCall) -> dict[str, Any]:
    """`format=json` (and the webhooks' `call.ended`): the call's summary, its segments, and
    the finals as Deepgram sent them."""
    return {
        "call": call.summary(),
        "segments": [
            {
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "channel": s.channel,
                "speaker": s.speaker,
                "text": s.text,
            }
            for s in segments(call)
        ],
        "results": [json.loads(text) for text in call.finals],
    }


def transcript_text(call: FinishedCall) -> str:
    """`format=txt`: one `[mm:ss] Speaker: text` line per segment."""
    return "".join(
        f"[{int(s.start) // 60:02d}:{int(s.start) % 60:02d}] {s.speaker}: {s.text}\n"
        for s in segments(call)
    )
