"""The transcript kept of each call: what the recorder keeps, and how the transcript reads."""

from __future__ import annotations

import json
from typing import Any

from websockets.frames import CloseCode

from twilio_dg_proxy.hub import CALL_ENDED, Ending, Hub
from twilio_dg_proxy.transcripts import (
    FinishedCall,
    Recorder,
    segments,
    speakers,
    transcript_json,
    transcript_text,
)
from twilio_dg_proxy.viewer_protocol import CallInfo

INFO = CallInfo("CA1", {"From": "+15550100"}, ("inbound", "outbound"), 1_000)


def result(text: str, *, channel: int = 0, start: float = 0.0, final: bool = True) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, 2],
            "start": start,
            "duration": 1.5,
            "is_final": final,
            "channel": {"alternatives": [{"transcript": text}]},
            "metadata": {"request_id": f"req-{channel}"},
        }
    )


class Listener:
    def __init__(self, needs_finals: bool = True) -> None:
        self.needs_finals = needs_finals
        self.events: list[Any] = []

    def call_started(self, info: CallInfo) -> None:
        self.events.append(("started", info.call_sid))

    def final(self, call_sid: str, text: str) -> None:
        self.events.append(("final", call_sid, json.loads(text)["channel"]))

    def call_finished(self, call: FinishedCall) -> None:
        self.events.append(call)


def recording_hub(
    max_bytes: int = 1 << 20, needs_finals: bool = True
) -> tuple[Hub, Listener, Recorder]:
    hub, listener = Hub(queue_limit=10), Listener(needs_finals)
    recorder = Recorder(clock_ms=lambda: 5_000, listeners=[listener], max_bytes=max_bytes)
    hub.sinks.append(recorder)
    return hub, listener, recorder


def test_the_recorder_keeps_every_final_with_text_and_the_request_ids() -> None:
    hub, listener, _ = recording_hub()
    hub.open_call("CA1", INFO)
    sent = [
        result("hel", final=False),
        result("hello", start=0.0),
        result("", start=1.5),  # an empty final: silence
        result("hi", channel=1, start=0.5),
        json.dumps({"type": "Metadata", "request_id": "req-last"}),
        "not json",
    ]
    for text in sent:
        hub.publish("CA1", text)
    hub.end_call("CA1", CALL_ENDED)
    finished = listener.events[-1]
    assert isinstance(finished, FinishedCall)
    assert finished.finals == (sent[1], sent[3])
    assert finished.request_ids == ("req-0", "req-1", "req-last")
    assert (finished.ended_at_ms, finished.end_code, finished.end_reason) == (
        5_000,
        1000,
        "call ended",
    )
    assert not finished.truncated
    assert [e[0] for e in listener.events[:-1]] == ["started", "final", "final"]


def test_without_a_listener_that_needs_them_no_finals_are_kept_but_each_is_passed_on() -> None:
    hub, listener, recorder = recording_hub(needs_finals=False)
    hub.open_call("CA1", INFO)
    for i in range(3):
        hub.publish("CA1", result(f"hello {i}", start=float(i)))
    assert recorder._calls["CA1"].finals is None  # nothing held for the whole call
    hub.end_call("CA1", CALL_ENDED)
    finished = listener.events[-1]
    assert finished.finals == () and finished.request_ids == ("req-0",)
    assert [e[0] for e in listener.events[:-1]] == ["started", "final", "final", "final"]


def test_finals_are_kept_when_any_listener_needs_them() -> None:
    hub, listener, recorder = recording_hub(needs_finals=False)
    recorder.listeners.append(Listener(needs_finals=True))
    hub.open_call("CA1", INFO)
    hub.publish("CA1", result("hello"))
    hub.end_call("CA1", CALL_ENDED)
    assert listener.events[-1].finals == (result("hello"),)


def test_beyond_max_bytes_finals_are_no_longer_passed_on_even_when_none_are_kept() -> None:
    text = result("hello")
    hub, listener, _ = recording_hub(max_bytes=2 * len(text), needs_finals=False)
    hub.open_call("CA1", INFO)
    for _ in range(5):
        hub.publish("CA1", text)
    hub.end_call("CA1", CALL_ENDED)
    assert [e[0] for e in listener.events[:-1]] == ["started", "final", "final"]
    assert listener.events[-1].truncated


def test_calls_of_other_instances_are_not_recorded() -> None:
    hub, listener, _ = recording_hub()
    hub.open_call("CA2", remote=True)
    hub.publish("CA2", result("hello"))
    hub.end_call("CA2")
    assert listener.events == []


def test_beyond_max_bytes_the_transcript_is_truncated_and_counted() -> None:
    text = result("hello")
    hub, listener, recorder = recording_hub(max_bytes=2 * len(text))
    hub.open_call("CA1", INFO)
    for _ in range(5):
        hub.publish("CA1", text)
    hub.end_call("CA1", Ending(CloseCode.GOING_AWAY, "server shutting down"))
    finished = listener.events[-1]
    assert len(finished.finals) == 2 and finished.truncated
    assert recorder.truncated_calls == 1
    assert finished.end_code == 1001


def test_segments_are_in_time_order_across_channels_with_speaker_names() -> None:
    call = FinishedCall(
        CallInfo("CA1", {"CalleeName": "Ada"}),
        ended_at_ms=10_000,
        end_code=1000,
        end_reason="call ended",
        finals=(
            result("one", start=2.0),
            result("two", channel=1, start=0.5),
            result("three", start=0.5),
        ),
    )
    lines = [(s.start, s.speaker, s.text) for s in segments(call)]
    assert lines == [(0.5, "Caller", "three"), (0.5, "Ada", "two"), (2.0, "Caller", "one")]
    assert transcript_text(call) == "[00:00] Caller: three\n[00:00] Ada: two\n[00:02] Caller: one\n"
    body = transcript_json(call)
    assert body["call"]["callSid"] == "CA1" and body["call"]["durationMs"] == 10_000
    assert [s["text"] for s in body["segments"]] == ["three", "two", "one"]
    assert body["results"] == [json.loads(t) for t in call.finals]


def test_speaker_names_come_from_custom_parameters_or_default() -> None:
    assert speakers({}) == ("Caller", "Callee")
    assert speakers({"CallerName": " Bo ", "CalleeName": ""}) == ("Bo", "Callee")
