"""StereoMixer: timeline alignment, gap and lag filling, late packets, bounded memory."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twilio_dg_proxy.exceptions import TwilioProtocolError
from twilio_dg_proxy.mixer import SILENCE, StereoMixer
from twilio_dg_proxy.twilio_events import Media, Track, TwilioStream
from twilio_dg_proxy.twilio_simulator import SimulatedCall

FRAME = 160  # bytes (= samples) in one 20 ms Twilio frame


def frame(track: Track, index: int) -> bytes:
    """A frame whose bytes are never silence and differ per track and per index."""
    base = 0x00 if track == "inbound" else 0x80
    return bytes(base + (index + i) % 0x7F for i in range(FRAME))


def drain(mixer: StereoMixer) -> bytes:
    return b"".join(mixer.pop_chunks()) + mixer.flush()


def channel(stereo: bytes, index: int) -> bytes:
    return stereo[index::2]


def test_two_tracks_are_interleaved_inbound_left_outbound_right() -> None:
    mixer = StereoMixer(["outbound", "inbound"], chunk_ms=20, max_lag_ms=100)
    mixer.push("inbound", 0, frame("inbound", 0))
    mixer.push("outbound", 0, frame("outbound", 0))
    [chunk] = mixer.pop_chunks()
    assert channel(chunk, 0) == frame("inbound", 0)
    assert channel(chunk, 1) == frame("outbound", 0)


def test_chunks_have_exactly_chunk_ms_of_audio() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=100, max_lag_ms=100)
    for i in range(12):
        mixer.push("inbound", i * 20, frame("inbound", i))
        mixer.push("outbound", i * 20, frame("outbound", i))
    chunks = mixer.pop_chunks()
    assert [len(c) for c in chunks] == [1600, 1600]
    assert len(mixer.flush()) == 2 * 2 * FRAME


def test_nothing_is_handed_out_until_a_chunk_is_full() -> None:
    mixer = StereoMixer(["inbound"], chunk_ms=100, max_lag_ms=100)
    for i in range(4):
        mixer.push("inbound", i * 20, frame("inbound", i))
        assert mixer.pop_chunks() == []
    mixer.push("inbound", 80, frame("inbound", 4))
    assert len(mixer.pop_chunks()) == 1


def test_single_track_stream_is_mono() -> None:
    mixer = StereoMixer(["outbound"], chunk_ms=20, max_lag_ms=100)
    mixer.push("outbound", 0, frame("outbound", 0))
    assert mixer.channels == 1
    assert mixer.pop_chunks() == [frame("outbound", 0)]


def test_lost_packet_becomes_silence_on_its_own_channel_only() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=20, max_lag_ms=1000)
    for i in range(3):
        if i != 1:
            mixer.push("inbound", i * 20, frame("inbound", i))
        mixer.push("outbound", i * 20, frame("outbound", i))
    out = drain(mixer)
    left = channel(out, 0)
    assert left == frame("inbound", 0) + bytes([SILENCE]) * FRAME + frame("inbound", 2)
    assert channel(out, 1) == b"".join(frame("outbound", i) for i in range(3))
    assert mixer.stats.gap_samples == FRAME


def test_duplicate_of_audio_already_sent_is_dropped_and_counted() -> None:
    mixer = StereoMixer(["inbound"], chunk_ms=20, max_lag_ms=100)
    mixer.push("inbound", 0, frame("inbound", 0))
    assert mixer.pop_chunks() == [frame("inbound", 0)]
    mixer.push("inbound", 0, frame("inbound", 9))
    assert mixer.pop_chunks() == []
    assert mixer.flush() == b""
    assert (mixer.stats.late_packets, mixer.stats.late_samples) == (1, FRAME)


def test_packet_partly_late_keeps_its_new_part() -> None:
    mixer = StereoMixer(["inbound"], chunk_ms=10, max_lag_ms=100)
    mixer.push("inbound", 0, frame("inbound", 0)[:80])
    assert len(b"".join(mixer.pop_chunks())) == 80
    mixer.push("inbound", 0, frame("inbound", 0))
    assert mixer.flush() == frame("inbound", 0)[80:]
    assert mixer.stats.late_samples == 80
    assert mixer.stats.late_packets == 0


def test_reordered_packet_fills_its_gap_if_it_is_not_yet_sent() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=100, max_lag_ms=1000)
    mixer.push("inbound", 40, frame("inbound", 2))
    mixer.push("inbound", 0, frame("inbound", 0))
    mixer.push("inbound", 20, frame("inbound", 1))
    out = mixer.flush()
    assert channel(out, 0) == b"".join(frame("inbound", i) for i in range(3))


def test_absent_outbound_track_is_padded_after_max_lag() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=100, max_lag_ms=300)
    out = b""
    for i in range(100):  # two seconds of caller audio, callee still ringing
        mixer.push("inbound", i * 20, frame("inbound", i))
        out += b"".join(mixer.pop_chunks())
    # Everything older than max_lag + one chunk has gone out.
    assert len(out) // 2 >= 100 * FRAME - (300 + 100) * 8
    assert set(channel(out, 1)) == {SILENCE}
    assert channel(out, 0) == b"".join(frame("inbound", i) for i in range(100))[: len(out) // 2]


def test_late_starting_outbound_track_joins_at_its_timestamp() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=20, max_lag_ms=100)
    for i in range(1500):  # 30 s of ringing
        mixer.push("inbound", i * 20, frame("inbound", i))
    mixer.pop_chunks()
    for i in range(1500, 1510):
        mixer.push("inbound", i * 20, frame("inbound", i))
        mixer.push("outbound", i * 20, frame("outbound", i))
    tail = b"".join(mixer.pop_chunks()) + mixer.flush()
    right = channel(tail, 1)
    answered = b"".join(frame("outbound", i) for i in range(1500, 1510))
    assert right.endswith(answered)
    assert set(right[: -len(answered)]) <= {SILENCE}
    assert mixer.stats.discontinuities == 0


def test_huge_forward_jump_reanchors_instead_of_allocating() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=20, max_lag_ms=100, max_gap_ms=1000)
    mixer.push("inbound", 0, frame("inbound", 0))
    mixer.push("inbound", 10**12, frame("inbound", 1))
    assert mixer.pending_samples() <= 2 * FRAME
    assert mixer.stats.discontinuities == 1
    # The track continues from its new anchor without further jumps.
    mixer.push("inbound", 10**12 + 20, frame("inbound", 2))
    assert mixer.stats.discontinuities == 1
    assert channel(drain(mixer), 0) == b"".join(frame("inbound", i) for i in range(3))


def test_huge_backward_jump_reanchors_instead_of_dropping_the_rest_of_the_call() -> None:
    mixer = StereoMixer(["inbound"], chunk_ms=20, max_lag_ms=100, max_gap_ms=1000)
    for i in range(200):  # four seconds, then the clock restarts at zero
        mixer.push("inbound", i * 20, frame("inbound", i))
    mixer.pop_chunks()
    mixer.push("inbound", 0, frame("inbound", 100))
    mixer.push("inbound", 20, frame("inbound", 101))
    assert mixer.stats.discontinuities == 1
    assert mixer.stats.late_packets == 0
    assert drain(mixer).endswith(frame("inbound", 100) + frame("inbound", 101))


def test_flush_pads_the_shorter_track() -> None:
    mixer = StereoMixer(["inbound", "outbound"], chunk_ms=100, max_lag_ms=1000)
    mixer.push("inbound", 0, frame("inbound", 0))
    mixer.push("inbound", 20, frame("inbound", 1))
    mixer.push("outbound", 0, frame("outbound", 0))
    out = mixer.flush()
    assert channel(out, 1) == frame("outbound", 0) + bytes([SILENCE]) * FRAME
    assert mixer.flush() == b""


def test_tracks_must_be_one_or_two_distinct() -> None:
    with pytest.raises(ValueError):
        StereoMixer([], chunk_ms=20, max_lag_ms=100)
    with pytest.raises(ValueError):
        StereoMixer(["inbound", "inbound"], chunk_ms=20, max_lag_ms=100)


# --- properties ---------------------------------------------------------------------------

TRACKS: tuple[Track, Track] = ("inbound", "outbound")


@st.composite
def call_audio(draw: st.DrawFn) -> tuple[list[tuple[Track, int, bytes]], dict[Track, bytes]]:
    """Arrivals for both tracks (each track in order, tracks interleaved at random, packets
    lost at random, each track starting at its own time) and each track's true timeline."""
    per_track: dict[Track, list[tuple[Track, int, bytes]]] = {}
    timelines: dict[Track, bytearray] = {}
    for track in TRACKS:
        first = draw(st.integers(0, 50))
        count = draw(st.integers(0, 40))
        kept = draw(st.lists(st.booleans(), min_size=count, max_size=count))
        packets = []
        timeline = bytearray([SILENCE]) * ((first + count) * FRAME)
        for i in range(first, first + count):
            if kept[i - first]:
                data = frame(track, i)
                packets.append((track, i * 20, data))
                timeline[i * FRAME : (i + 1) * FRAME] = data
        per_track[track] = packets
        # The timeline ends where the last packet that arrived ends.
        end = (packets[-1][1] // 20 + 1) * FRAME if packets else 0
        timelines[track] = timeline[:end]
    order: list[Track] = [t for t in TRACKS for _ in per_track[t]]
    choices = draw(st.permutations(order))
    queues = {t: iter(per_track[t]) for t in TRACKS}
    arrivals = [next(queues[t]) for t in choices]
    return arrivals, {t: bytes(v) for t, v in timelines.items()}


@given(call_audio(), st.sampled_from([20, 60, 100, 250]))
@settings(max_examples=300, deadline=None)
def test_with_enough_lag_allowance_output_is_the_true_timeline(
    case: tuple[list[tuple[Track, int, bytes]], dict[Track, bytes]], chunk_ms: int
) -> None:
    arrivals, timelines = case
    mixer = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=10_000)
    out = b""
    for track, ts, payload in arrivals:
        mixer.push(track, ts, payload)
        for chunk in mixer.pop_chunks():
            assert len(chunk) == 2 * chunk_ms * 8
            out += chunk
    out += mixer.flush()
    length = max(len(t) for t in timelines.values())
    for index, track in enumerate(TRACKS):
        expected = timelines[track] + bytes([SILENCE]) * (length - len(timelines[track]))
        assert channel(out, index) == expected
    assert mixer.stats.late_samples == 0


@given(call_audio(), st.integers(20, 400), st.sampled_from([20, 100]))
@settings(max_examples=300, deadline=None)
def test_with_any_lag_every_sample_is_its_own_or_silence_and_losses_are_counted(
    case: tuple[list[tuple[Track, int, bytes]], dict[Track, bytes]], max_lag_ms: int, chunk_ms: int
) -> None:
    arrivals, timelines = case
    mixer = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=max_lag_ms)
    out = b""
    for arrival in arrivals:
        mixer.push(*arrival)
        out += b"".join(mixer.pop_chunks())
    out += mixer.flush()
    received = {t: sum(len(p) for tr, _, p in arrivals if tr == t) for t in TRACKS}
    kept = 0
    for index, track in enumerate(TRACKS):
        got = channel(out, index)
        truth = timelines[track]
        for pos, byte in enumerate(got):
            assert byte == SILENCE or (pos < len(truth) and byte == truth[pos])
        kept += sum(1 for b in got if b != SILENCE)
    assert kept + mixer.stats.late_samples == sum(received.values())


@given(
    st.lists(
        st.tuples(
            st.sampled_from(TRACKS),
            st.integers(0, 10**13),
            st.binary(min_size=0, max_size=800),
        ),
        max_size=60,
    ),
    st.integers(20, 500),
    st.integers(20, 400),
)
@settings(max_examples=300, deadline=None)
def test_memory_stays_bounded_whatever_the_timestamps(
    packets: list[tuple[Track, int, bytes]], max_lag_ms: int, chunk_ms: int
) -> None:
    mixer = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=max_lag_ms, max_gap_ms=2000)
    for packet in packets:
        mixer.push(*packet)
        for chunk in mixer.pop_chunks():
            assert len(chunk) == 2 * chunk_ms * 8
        assert mixer.pending_samples() < (max_lag_ms + chunk_ms) * 8
    assert len(mixer.flush()) < 2 * (max_lag_ms + chunk_ms) * 8


@given(
    st.lists(
        st.one_of(
            st.tuples(st.sampled_from(TRACKS), st.integers(0, 10**14), st.binary(max_size=400)),
            st.text(max_size=40),
        ),
        max_size=80,
    )
)
@settings(max_examples=200, deadline=None)
def test_parser_and_mixer_together_raise_only_protocol_errors_and_stay_bounded(
    inputs: list[tuple[Track, int, bytes] | str],
) -> None:
    """The /twilio path without sockets: any messages, valid or not, at any timestamps."""
    call = SimulatedCall()
    stream = TwilioStream()
    stream.receive(call.start())
    mixer = StereoMixer(TRACKS, chunk_ms=100, max_lag_ms=300)
    for item in inputs:
        text = call.media(*item) if isinstance(item, tuple) else item
        try:
            event = stream.receive(text)
        except TwilioProtocolError:
            continue
        if isinstance(event, Media):
            mixer.push(event.track, event.timestamp_ms, event.payload)
            mixer.pop_chunks()
        assert mixer.pending_samples() < (300 + 100) * 8


@given(call_audio(), st.integers(20, 400), st.sampled_from([20, 100]), st.data())
@settings(max_examples=300, deadline=None)
def test_pop_chunks_hands_out_every_ready_chunk_however_rarely_it_is_called(
    case: tuple[list[tuple[Track, int, bytes]], dict[Track, bytes]],
    max_lag_ms: int,
    chunk_ms: int,
    data: st.DataObject,
) -> None:
    """Whatever pushes came since the last call, `pop_chunks` leaves less than a chunk ready:
    audio is ready up to the slowest track's end, or the fastest's end less the lag bound."""
    arrivals, _ = case
    # After which arrivals it is called (hypothesis draws it, from never to always), and
    # once more after the last: every example checks at least once.
    calls = data.draw(st.lists(st.booleans(), min_size=len(arrivals), max_size=len(arrivals)))
    mixer = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=max_lag_ms)
    chunk, lag = chunk_ms * 8, max_lag_ms * 8
    ends = dict.fromkeys(TRACKS, 0)  # where each track's audio received so far ends
    handed_out = 0

    def pop_and_check() -> None:
        nonlocal handed_out
        handed_out += sum(len(c) for c in mixer.pop_chunks()) // 2
        held = [max(end - handed_out, 0) for end in ends.values()]
        assert handed_out % chunk == 0
        assert max(min(held), max(held) - lag) < chunk

    for (track, timestamp, payload), call_now in zip(arrivals, calls, strict=True):
        mixer.push(track, timestamp, payload)
        ends[track] = max(ends[track], timestamp * 8 + len(payload))
        if call_now:
            pop_and_check()
    pop_and_check()


@given(call_audio(), st.integers(20, 400), st.sampled_from([20, 100]))
@settings(max_examples=300, deadline=None)
def test_push_says_when_a_chunk_may_be_ready(
    case: tuple[list[tuple[Track, int, bytes]], dict[Track, bytes]], max_lag_ms: int, chunk_ms: int
) -> None:
    """Popping only after a push that says a chunk may be ready (as the intake does) hands
    out the same chunks, at the same pushes, as popping after every push."""
    arrivals, _ = case
    every = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=max_lag_ms)
    told = StereoMixer(TRACKS, chunk_ms=chunk_ms, max_lag_ms=max_lag_ms)
    for track, timestamp, payload in arrivals:
        every.push(track, timestamp, payload)
        ready = told.push(track, timestamp, payload)
        assert every.pop_chunks() == (told.pop_chunks() if ready else [])
    assert every.flush() == told.flush()
