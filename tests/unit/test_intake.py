"""StreamIntake: a Media Stream's messages taken as they arrive, into the mixer and buffer."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.exceptions import (
    InvalidText,
    MalformedMessage,
    UnexpectedEvent,
    UnsupportedFrame,
)
from twilio_dg_proxy.intake import StreamIntake
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S
from .readers import next_chunk

LOG = logging.getLogger("test_intake")
N = 8000  # one second per track


def intake(chunk_ms: int = 100) -> StreamIntake:
    return StreamIntake(chunk_ms=chunk_ms, max_lag_ms=300, buffer_s=30, log=LOG)


def feed(taker: StreamIntake, *messages: str | bytes) -> None:
    for message in messages:
        taker.message(message.encode() if isinstance(message, str) else message, True)


def audio_of(taker: StreamIntake) -> bytes:
    """All the audio the buffer holds (it must be closed)."""
    assert taker.audio is not None

    async def take() -> bytes:
        assert taker.audio is not None
        parts = []
        while (chunk := await next_chunk(taker.audio)) is not None:
            parts.append(chunk.data)
        return b"".join(parts)

    return asyncio.run(take())


def test_a_whole_call_reaches_the_buffer_in_chunks_then_the_buffer_closes() -> None:
    call = SimulatedCall()
    audio = {"inbound": pattern("inbound", N), "outbound": pattern("outbound", N)}
    taker = intake()
    feed(taker, call.connected(), call.start())
    assert taker.start is not None and taker.audio is not None
    feed(taker, *(m for _, m in call.frames(audio)))  # type: ignore[arg-type]
    assert taker.audio.held_bytes == 2 * N  # every 100 ms chunk is out as soon as it is full
    assert not taker.ended
    feed(taker, call.stop())
    assert taker.ended and taker.stopped and taker.error is None
    stereo = audio_of(taker)
    assert stereo[0::2] == audio["inbound"] and stereo[1::2] == audio["outbound"]


def test_chunks_leave_as_they_fill_not_at_the_end() -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake(chunk_ms=100)
    feed(taker, call.start())
    assert taker.audio is not None
    frames = [m for _, m in call.frames({"inbound": pattern("inbound", 800)})]
    feed(taker, *frames[:4])
    assert taker.audio.held_bytes == 0
    feed(taker, frames[4])
    assert taker.audio.held_bytes == 800


async def test_wait_for_start_returns_the_start() -> None:
    call = SimulatedCall()
    taker = intake()
    waiting = asyncio.create_task(taker.wait_for_start())
    await asyncio.sleep(0)
    feed(taker, call.connected())
    await asyncio.sleep(0)
    assert not waiting.done()
    feed(taker, call.start())
    start = await waiting
    assert start is not None and start.call_sid == call.call_sid


@pytest.mark.parametrize("end", ["stop", "closed", "bad"])
async def test_wait_for_start_returns_none_if_the_stream_ends_first(end: str) -> None:
    call = SimulatedCall()
    taker = intake()
    waiting = asyncio.create_task(taker.wait_for_start())
    await asyncio.sleep(0)
    if end == "stop":
        feed(taker, call.stop())
    elif end == "closed":
        taker.closed()
    else:
        feed(taker, "{")
    assert await waiting is None
    assert taker.ended and taker.audio is None
    assert isinstance(taker.error, MalformedMessage) == (end == "bad")


async def test_wait_for_end_waits_for_stop() -> None:
    call = SimulatedCall()
    taker = intake()
    feed(taker, call.start())
    waiting = asyncio.create_task(taker.wait_for_end())
    await asyncio.sleep(0)
    assert not waiting.done()
    feed(taker, call.stop())
    await asyncio.wait_for(waiting, 1 * S)


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (b"\x00\x01", UnsupportedFrame),  # sent as a binary message
        ("{not json", MalformedMessage),
        (b'{"event": "\xff"}', InvalidText),
        ("second start", UnexpectedEvent),
    ],
)
def test_bad_input_ends_the_stream_and_keeps_the_audio_so_far(
    bad: str | bytes, error: type[Exception]
) -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake()
    feed(taker, call.start())
    frames = [m for _, m in call.frames({"inbound": pattern("inbound", 480)})]
    feed(taker, *frames)
    if bad == b"\x00\x01":
        taker.message(bad, False)
    else:
        feed(taker, call.start() if bad == "second start" else bad)
    assert isinstance(taker.error, error)
    assert taker.ended and not taker.stopped
    feed(taker, *[m for _, m in call.frames({"inbound": pattern("inbound", 160)})])
    assert audio_of(taker) == pattern("inbound", 480)  # what came before, nothing after


def test_after_stop_nothing_more_is_taken() -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake()
    feed(taker, call.start(), call.stop(), "{not json", call.start())
    assert taker.error is None and taker.stopped
    taker.closed()
    assert audio_of(taker) == b""


def test_closing_mid_call_flushes_the_partial_chunk() -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake()
    feed(taker, call.start(), *[m for _, m in call.frames({"inbound": pattern("inbound", 320)})])
    taker.closed()
    assert taker.ended and not taker.stopped and taker.error is None
    assert audio_of(taker) == pattern("inbound", 320)


def test_unknown_events_are_counted_and_warned_about_once_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    call = SimulatedCall()
    taker = intake()
    with caplog.at_level(logging.WARNING, LOG.name):
        feed(taker, '{"event": "new"}', call.start(), '{"event": "new"}', '{"event": "other"}')
    assert taker.unknown_count == 3 and taker.unknown_names == {"new", "other"}
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring unknown Twilio event 'new'",
        "ignoring unknown Twilio event 'other'",
    ]
    assert not taker.ended


def test_endless_unknown_event_names_cost_neither_memory_nor_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    taker = intake()
    with caplog.at_level(logging.WARNING, LOG.name):
        feed(taker, *(json.dumps({"event": f"e{i}"}) for i in range(1000)))
    assert taker.unknown_count == 1000
    assert len(taker.unknown_names) == 11 and len(caplog.records) == 11
    assert caplog.records[-1].getMessage() == "ignoring more unknown Twilio events (not named here)"


def test_dtmf_is_logged_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    call = SimulatedCall()
    taker = intake()
    dtmf = json.dumps(
        {
            "event": "dtmf",
            "sequenceNumber": "3",
            "streamSid": call.stream_sid,
            "dtmf": {"track": "inbound_track", "digit": "7"},
        }
    )
    with caplog.at_level(logging.INFO, LOG.name):
        feed(taker, call.start(), dtmf)
    assert not caplog.records and not taker.ended and taker.error is None


def test_a_bug_is_kept_for_the_task_and_never_raised_into_the_socket_layer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake()
    feed(taker, call.start())
    assert taker.mixer is not None

    def broken(*args: object) -> None:
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(taker.mixer, "push", broken)
    feed(taker, *[m for _, m in call.frames({"inbound": pattern("inbound", 160)})])
    assert isinstance(taker.error, ZeroDivisionError) and taker.ended


@given(
    st.lists(
        st.sampled_from(["start", "media", "stop", "junk", "binary", "unknown", "connected"]),
        max_size=30,
    )
)
def test_any_sequence_of_messages_never_raises_and_ends_at_most_once(kinds: list[str]) -> None:
    call = SimulatedCall(tracks=("inbound",))
    media = iter([m for _, m in call.frames({"inbound": pattern("inbound", 160 * 30)})])
    taker = intake(chunk_ms=20)
    first_error = None
    for kind in kinds:
        was_ended = taker.ended
        if kind == "binary":
            taker.message(b"\x00", False)
        else:
            message = {
                "start": call.start,
                "media": lambda: next(media),
                "stop": call.stop,
                "junk": lambda: "[]",
                "unknown": lambda: '{"event": "new"}',
                "connected": call.connected,
            }[kind]()
            feed(taker, message)
        assert taker.ended or not was_ended  # once ended, always ended
        if was_ended:
            assert taker.error is first_error  # and nothing more is taken
        first_error = taker.error
    if taker.audio is not None:
        taker.closed()
        assert len(audio_of(taker)) % 160 == 0


@given(
    st.lists(
        st.sampled_from(["media", "media", "media", "start", "stop", "junk", "compact"])
        | st.integers(min_value=0, max_value=400),
        max_size=40,
    )
)
def test_the_fast_path_of_media_changes_nothing_but_the_cost(steps: list[str | int]) -> None:
    """An intake whose stream never takes the fast path (`TwilioStream.media`) ends with
    the same audio, error and state. Integers mutate the next media message at that index."""
    call = SimulatedCall()
    media = iter([m for _, m in call.frames({"inbound": pattern("inbound", 160 * 40)})])
    fast, full = intake(chunk_ms=40), intake(chunk_ms=40)
    full.stream.media = lambda text: None  # type: ignore[method-assign]
    for step in steps:
        if step in ("media", "compact") or isinstance(step, int):
            message = next(media, call.stop())
            if step == "compact":
                message = json.dumps(json.loads(message), separators=(",", ":"))
            elif isinstance(step, int):
                at = step % len(message)
                message = message[:at] + "0\\"[step % 2] + message[at + 1 :]
        else:
            message = call.start() if step == "start" else call.stop() if step == "stop" else "[]"
        feed(fast, message)
        feed(full, message)
        state = (fast.ended, fast.stopped, repr(fast.error))
        assert state == (full.ended, full.stopped, repr(full.error))
    if fast.audio is not None:
        fast.closed()
        full.closed()
        assert audio_of(fast) == audio_of(full)
