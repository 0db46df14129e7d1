"""The pure reconnect policy: what is retried, backoff, replay pace, time shift; AudioBuffer."""

from __future__ import annotations

import asyncio
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.audio_buffer import AudioBuffer, Chunk
from twilio_dg_proxy.deepgram_protocol import (
    REPLAY_BURST_S,
    REPLAY_SPEED,
    Backoff,
    is_retryable,
    replay_wait,
    shift_times,
)
from twilio_dg_proxy.exceptions import (
    DeepgramClosed,
    DeepgramError,
    DeepgramNotConfigured,
    DeepgramRefused,
    DeepgramUnavailable,
)

from .readers import next_chunk


@pytest.mark.parametrize(
    ("exc", "retryable"),
    [
        (DeepgramRefused(400, "Bad Request", ""), False),
        (DeepgramRefused(401, "Invalid credentials.", ""), False),
        (DeepgramRefused(402, "Payment Required", ""), False),
        (DeepgramRefused(403, "Forbidden", ""), False),
        (DeepgramRefused(429, "Too Many Requests", ""), True),
        (DeepgramRefused(500, "Internal", ""), True),
        (DeepgramRefused(503, "Unavailable", ""), True),
        (DeepgramClosed(1011, "NET-0000"), True),
        (DeepgramClosed(1011, "NET-0001"), True),
        (DeepgramClosed(None, ""), True),  # TCP dropped without a close frame
        (DeepgramClosed(1000, ""), True),  # closed before we asked: unexpected
        (DeepgramClosed(1008, "DATA-0000"), False),  # it cannot decode our audio
        (DeepgramUnavailable("connection refused"), True),
        (DeepgramNotConfigured("no key"), False),
    ],
)
def test_which_failures_are_retried(exc: DeepgramError, retryable: bool) -> None:
    assert is_retryable(exc) is retryable


@given(st.integers(1, 50), st.floats(0, 1, exclude_max=True))
def test_backoff_delays_grow_within_bounds(attempt: int, jitter: float) -> None:
    backoff = Backoff(max_attempts=5, budget_s=30)
    ceiling = min(backoff.longest_s, backoff.first_s * 2 ** (attempt - 1))
    assert ceiling / 2 <= backoff.delay(attempt, jitter) <= ceiling


def test_backoff_gives_up_on_attempts_or_budget() -> None:
    backoff = Backoff(max_attempts=3, budget_s=10)
    assert not backoff.gives_up(3, 9.9)
    assert backoff.gives_up(4, 0.0)
    assert backoff.gives_up(1, 10.0)


def test_replay_goes_no_faster_than_deepgram_takes_it() -> None:
    assert replay_wait(REPLAY_BURST_S, 0.0) == 0.0  # the burst goes at once
    assert replay_wait(REPLAY_BURST_S + 2.5, 0.0) == pytest.approx(2.5 / REPLAY_SPEED)
    assert replay_wait(10.0, 100.0) == 0.0  # real time is always slower


def results_message(start: float, words: list[tuple[float, float]]) -> str:
    return json.dumps(
        {
            "type": "Results",
            "start": start,
            "duration": 1.0,
            "channel": {
                "alternatives": [
                    {
                        "transcript": "a b",
                        "words": [{"word": "a", "start": s, "end": e} for s, e in words],
                    }
                ]
            },
        }
    )


def test_shift_moves_result_and_word_times_but_not_durations() -> None:
    shifted = json.loads(shift_times(results_message(1.5, [(1.5, 1.75), (1.8, 2.1)]), 10.0))
    assert shifted["start"] == 11.5 and shifted["duration"] == 1.0
    words = shifted["channel"]["alternatives"][0]["words"]
    assert [(w["start"], w["end"]) for w in words] == [(11.5, 11.75), (11.8, 12.1)]


def test_shift_moves_utterance_end_and_speech_started() -> None:
    end = json.loads(shift_times('{"type":"UtteranceEnd","last_word_end":2.5}', 3.0))
    started = json.loads(shift_times('{"type":"SpeechStarted","timestamp":0.5}', 3.0))
    assert end["last_word_end"] == 5.5 and started["timestamp"] == 3.5


@pytest.mark.parametrize("text", ['{"type": "Metadata", "duration": 3.0}', "not json", "[1, 2]"])
def test_shift_leaves_messages_without_times_alone(text: str) -> None:
    assert shift_times(text, 9.0) == text


json_values = st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers() | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["start", "end", "channel", "alternatives", "words", "timestamp"]),
            inner,
            max_size=4,
        )
    ),
    max_leaves=20,
)


@given(json_values.map(json.dumps) | st.text())
def test_shift_never_raises_whatever_deepgram_sends(text: str) -> None:
    """It runs in the socket callback that reads Deepgram's results: an odd message must
    pass (shifted where it can be), never end the call."""
    shift_times(text, 2.0)


def test_shift_survives_nesting_deeper_than_the_parser_goes() -> None:
    text = "[" * 100_000 + "]" * 100_000
    assert shift_times(text, 2.0) == text


@given(st.floats(0, 10_000), st.floats(0, 10_000))
def test_shift_has_no_float_noise(start: float, offset: float) -> None:
    shifted = json.loads(shift_times(results_message(start, []), offset))
    assert shifted["start"] == round(start + offset, 6)


async def test_buffer_hands_out_chunks_in_order_with_their_timeline_positions() -> None:
    buffer = AudioBuffer(max_bytes=100)
    buffer.put(b"ab")
    buffer.put(b"")  # nothing to send: ignored
    buffer.put(b"cde")
    buffer.close()
    assert [await next_chunk(buffer) for _ in range(3)] == [Chunk(0, b"ab"), Chunk(2, b"cde"), None]


async def test_buffer_drops_the_oldest_beyond_its_bound_and_counts() -> None:
    buffer = AudioBuffer(max_bytes=4)
    for data in (b"aa", b"bb", b"cc"):
        buffer.put(data)
    assert (buffer.dropped_bytes, buffer.held_bytes, buffer.produced_bytes) == (2, 4, 6)
    assert await next_chunk(buffer) == Chunk(2, b"bb")


async def test_a_chunk_put_back_goes_out_first() -> None:
    buffer = AudioBuffer(max_bytes=100)
    buffer.put(b"aa")
    buffer.put(b"bb")
    first = await next_chunk(buffer)
    assert first is not None
    buffer.put_back(first)
    assert await next_chunk(buffer) == Chunk(0, b"aa")


async def test_get_waits_for_audio() -> None:
    buffer = AudioBuffer(max_bytes=100)
    waiting = asyncio.create_task(next_chunk(buffer))
    await asyncio.sleep(0)
    assert not waiting.done()
    buffer.put(b"x")
    assert await waiting == Chunk(0, b"x")


async def test_a_chunk_put_while_nothing_waits_goes_to_direct_if_it_takes_it() -> None:
    """The sender's direct write takes chunks in order while nothing is queued; once it
    refuses one (a full socket), that one and every later one are queued, in order."""
    buffer = AudioBuffer(max_bytes=100)
    taken: list[Chunk] = []
    accept = True

    def direct(chunk: Chunk) -> bool:
        if accept:
            taken.append(chunk)
        return accept

    buffer.direct = direct
    buffer.put(b"ab", since=1.0)
    buffer.put(b"cd")
    accept = False
    buffer.put(b"ef")
    accept = True
    buffer.put(b"gh")  # behind a queued chunk: queued too, never written ahead of it
    buffer.close()
    assert taken == [Chunk(0, b"ab", 1.0), Chunk(2, b"cd")]
    assert [await next_chunk(buffer) for _ in range(3)] == [Chunk(4, b"ef"), Chunk(6, b"gh"), None]
    assert (buffer.produced_bytes, buffer.held_bytes, buffer.dropped_bytes) == (8, 0, 0)


async def test_a_buffer_that_empties_hands_chunks_to_direct_again_and_takes_one_put_back() -> None:
    """It holds a queue only while chunks wait: once emptied, a chunk put goes to `direct`
    again, and one put back after that still goes out first."""
    buffer = AudioBuffer(max_bytes=100)
    taken: list[Chunk] = []
    buffer.put(b"ab")  # nothing waits: queued
    assert await next_chunk(buffer) == Chunk(0, b"ab") and buffer.held_bytes == 0

    def direct(chunk: Chunk) -> bool:
        taken.append(chunk)
        return True

    buffer.direct = direct
    buffer.put(b"cd")
    assert taken == [Chunk(2, b"cd")] and buffer.held_bytes == 0
    buffer.put_back(taken[0])
    buffer.put(b"ef")  # behind the chunk put back: queued, not written ahead of it
    buffer.close()
    assert [await next_chunk(buffer) for _ in range(3)] == [Chunk(2, b"cd"), Chunk(4, b"ef"), None]
    assert taken == [Chunk(2, b"cd")]


async def test_a_wait_hands_chunks_to_direct_until_it_stops_and_wakes_at_a_chunk_or_the_end() -> (
    None
):
    buffer = AudioBuffer(max_bytes=100)
    taken: list[Chunk] = []

    def direct(chunk: Chunk) -> bool:
        taken.append(chunk)
        return len(taken) < 2  # the second is refused: queued

    assert buffer.take() is None
    waiter = buffer.wait(direct)
    buffer.put(b"ab")
    assert taken == [Chunk(0, b"ab")] and not waiter.done()
    buffer.put(b"cd")
    assert waiter.done() and buffer.take() == Chunk(2, b"cd") and buffer.take() is None
    buffer.stop_waiting()
    buffer.put(b"ef")
    assert len(taken) == 2 and buffer.take() == Chunk(4, b"ef")
    waiter = buffer.wait(direct)
    buffer.close()
    assert waiter.done() and buffer.closed and buffer.take() is None
