"""StreamIntake: a Media Stream's messages taken as they arrive, into the mixer and buffer."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from twilio_dg_proxy.exceptions import (
    InvalidText,
    MalformedMessage,
    UnexpectedEvent,
    UnsupportedFrame,
)
from twilio_dg_proxy.intake import READ_LIVE_MS, StreamIntake
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..timing import S

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
        while (chunk := await taker.audio.get()) is not None:
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


# Pacing: how long the connection may leave Twilio's messages unread after a read.


def test_no_rest_until_a_read_makes_a_chunk_then_the_time_to_the_next_one_less_one_frame() -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake(chunk_ms=100)
    feed(taker, call.start())
    assert taker.rest_after_read() == 0.0
    frames = [m for _, m in call.frames({"inbound": pattern("inbound", 1600)})]
    feed(taker, *frames[:4])
    assert taker.rest_after_read() == 0.0  # read the next frames as they come
    feed(taker, frames[4])  # the chunk is made: nothing is due for 100 ms
    assert taker.rest_after_read() == pytest.approx((100 - READ_LIVE_MS) / 1000)
    assert taker.rest_after_read() == 0.0  # once per chunk made
    feed(taker, *frames[5:8])  # 60 ms of the next chunk, read in one go after the rest
    assert taker.rest_after_read() == 0.0
    feed(taker, *frames[8:10])
    assert taker.rest_after_read() == pytest.approx((100 - READ_LIVE_MS) / 1000)


def test_a_read_that_makes_a_chunk_and_more_rests_only_until_the_next_is_nearly_due() -> None:
    call = SimulatedCall()
    taker = intake(chunk_ms=100)
    feed(taker, call.start())
    audio = {"inbound": pattern("inbound", 1920), "outbound": pattern("outbound", 1920)}
    frames = [m for _, m in call.frames(audio)]  # type: ignore[arg-type]
    feed(taker, *frames[:16])  # 160 ms of both tracks in one read: a chunk, and 60 ms more
    assert taker.rest_after_read() == pytest.approx((40 - READ_LIVE_MS) / 1000)
    feed(taker, *frames[16:])  # 240 ms in all: two chunks made, 40 ms left
    assert taker.rest_after_read() == pytest.approx((60 - READ_LIVE_MS) / 1000)


def test_no_rest_while_a_track_is_more_than_a_frame_behind_the_other() -> None:
    """The track behind may catch up at once (a stalled track's backlog): read live."""
    call = SimulatedCall()
    taker = intake(chunk_ms=100)
    feed(taker, call.start())
    inbound = [m for _, m in call.frames({"inbound": pattern("inbound", 1600)})]
    outbound = [m for _, m in call.frames({"outbound": pattern("outbound", 1600)})]
    feed(taker, *inbound[:7], *outbound[:5])  # a chunk; inbound 40 ms into the next
    assert taker.rest_after_read() == 0.0
    feed(taker, *inbound[7:10], *outbound[5:10])  # a chunk, the tracks level again
    assert taker.rest_after_read() == pytest.approx((100 - READ_LIVE_MS) / 1000)


@pytest.mark.parametrize("chunk_ms", [20, READ_LIVE_MS])
def test_chunks_as_short_as_a_frame_and_its_margin_are_read_as_they_come(chunk_ms: int) -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake(chunk_ms=chunk_ms)
    feed(taker, call.start())
    feed(taker, *(m for _, m in call.frames({"inbound": pattern("inbound", 800)})))
    assert taker.rest_after_read() == 0.0


def test_no_rest_once_the_stream_has_ended() -> None:
    call = SimulatedCall(tracks=("inbound",))
    taker = intake(chunk_ms=100)
    feed(taker, call.start(), *(m for _, m in call.frames({"inbound": pattern("inbound", 800)})))
    feed(taker, call.stop())
    assert taker.rest_after_read() == 0.0


class Clock:
    """The intake's clock, moved by the test (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def paced_intake(clock: Clock) -> tuple[StreamIntake, list[str]]:
    """An intake at 100 ms chunks on `clock`, started, and its call's frames (both tracks,
    20 s, in Twilio's order: inbound then outbound of each 20 ms)."""
    call = SimulatedCall()
    taker = StreamIntake(chunk_ms=100, max_lag_ms=300, buffer_s=30, log=LOG, clock=clock)
    feed(taker, call.start())
    audio = {"inbound": pattern("inbound", 160_000), "outbound": pattern("outbound", 160_000)}
    return taker, [m for _, m in call.frames(audio)]  # type: ignore[arg-type]


def test_behind_its_best_pace_the_stream_rests_less_by_as_much() -> None:
    """A stream that fell behind (a stall) may send its backlog at any speed: the rest is
    shortened by how far behind it is, to none."""
    clock = Clock()
    taker, frames = paced_intake(clock)
    for tick in range(10):  # 200 ms at Twilio's pace, each pair read 2 ms after its audio
        clock.now = 1000.0 + (tick + 1) * 0.020 + 0.002
        feed(taker, *frames[2 * tick : 2 * tick + 2])
        rest = taker.rest_after_read()
    assert rest == pytest.approx((100 - READ_LIVE_MS) / 1000)
    clock.now += 0.200 + 0.040  # a 200 ms stall: the next two frame pairs come 40 ms late
    feed(taker, *frames[20:28])  # ... with the rest of the chunk
    feed(taker, *frames[28:30])
    assert taker.rest_after_read() == 0.0  # 140 ms behind: no rest
    clock.now += 0.002
    feed(taker, *frames[30:44])  # the backlog 2 ms later, to 440 ms: a chunk, 2 ms behind
    assert taker.rest_after_read() == pytest.approx((60 - READ_LIVE_MS - 2) / 1000)


@settings(deadline=None)
@given(
    jitter_ms=st.lists(st.floats(min_value=0, max_value=60), min_size=20, max_size=150),
    stall=st.tuples(st.integers(min_value=0, max_value=120), st.floats(0, 500)),
)
# Frames read in a batch after a rest came sooner than any read showed: the proxy cannot know.
@example(jitter_ms=[51, 0, 51, 0, 31, 12, 0, 0, 0, 26, 7] + [0] * 9, stall=(0, 0.0))
def test_a_rest_never_holds_a_chunk_whose_last_frame_keeps_the_best_pace_seen(
    jitter_ms: list[float], stall: tuple[int, float]
) -> None:
    """An oracle apart from the policy: Twilio sends each 20 ms frame pair when its audio
    ends; the network delays each by some jitter (and one stall delays all from frame k on),
    in order, as TCP keeps them. The proxy reads a frame when it comes, or at the end of a
    rest, and sees only when it read what: the best pace it has seen is the least time
    between the end of a read's audio and that read. A chunk may be made late only if its
    last frame came more than READ_LIVE_MS sooner after its audio than that best, and then
    by no more than the difference."""
    clock = Clock()
    taker, frames = paced_intake(clock)
    assert taker.audio is not None
    stall_at, stall_ms = stall
    arrivals: list[float] = []
    for k, jitter in enumerate(jitter_ms):
        sent = (k + 1) * 20.0
        delay = jitter + (stall_ms if k >= stall_at else 0.0)
        arrivals.append(max(sent + delay, arrivals[-1] if arrivals else 0.0))
    resting_until = 0.0
    best_seen = float("inf")
    k = 0
    while k < len(arrivals):
        read_at = max(arrivals[k], resting_until)
        batch = [j for j in range(k, len(arrivals)) if arrivals[j] <= read_at]
        last = batch[-1]
        clock.now = read_at / 1000
        made_before = taker.audio.produced_bytes
        feed(taker, *(frames[2 * j + t] for j in batch for t in (0, 1)))
        if taker.audio.produced_bytes > made_before:  # a chunk made by this read
            beaten_by = best_seen - READ_LIVE_MS - (arrivals[last] - (last + 1) * 20.0)
            assert read_at - arrivals[last] <= max(beaten_by, 0.0) + 1e-6
        best_seen = min(best_seen, read_at - (last + 1) * 20.0)
        resting_until = read_at + taker.rest_after_read() * 1000
        k = batch[-1] + 1
