"""The per-channel segmenter: energy VAD, endpointing, forced cuts, Finalize and CloseStream.

Signals are synthetic: a 300 Hz tone at -13 dBFS stands for speech, zeros for silence.
"""

from __future__ import annotations

import numpy as np
import pytest

from twilio_dg_proxy.engine.audio import Samples
from twilio_dg_proxy.engine.segmenter import (
    SAMPLE_RATE,
    Event,
    Segment,
    Segmenter,
    SegmenterConfig,
    SpeechStarted,
    UtteranceGap,
)

MS = SAMPLE_RATE // 1000


def tone(ms: int, amplitude: float = 0.3) -> Samples:
    t = np.arange(ms * MS) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * 300 * t)).astype(np.float32)


def silence(ms: int) -> Samples:
    return np.zeros(ms * MS, dtype=np.float32)


def feed(segmenter: Segmenter, audio: Samples, chunk_ms: int = 100) -> list[Event]:
    events: list[Event] = []
    step = chunk_ms * MS
    for i in range(0, len(audio), step):
        events += segmenter.push(audio[i : i + step])
    return events


def segments(events: list[Event]) -> list[Segment]:
    return [e for e in events if isinstance(e, Segment)]


def test_silence_gives_no_event_and_nothing_to_decode() -> None:
    segmenter = Segmenter()
    assert feed(segmenter, silence(3000)) == []
    assert segmenter.pending() is None
    last = segmenter.close()
    assert last is not None
    assert (last.start, last.end) == (0, 3000 * MS)
    assert not last.has_speech and not last.speech_final


def test_an_utterance_ends_after_the_endpointing_silence() -> None:
    segmenter = Segmenter(SegmenterConfig(endpointing_ms=600, preroll_ms=300))
    events = feed(segmenter, np.concatenate([silence(500), tone(1000), silence(1000)]))
    assert events[0] == SpeechStarted(500 * MS)
    [segment] = segments(events)
    assert segment.start == 0
    assert segment.end == (500 + 1000 + 600) * MS  # cut when the endpoint is reached
    assert segment.speech_final and not segment.from_finalize
    assert segment.audio_start == 200 * MS  # pre-roll before the onset
    assert len(segment.audio) == segment.end - segment.audio_start
    # The rest of the silence belongs to the next final.
    last = segmenter.close()
    assert last is not None and last.start == segment.end and not last.speech_final


def test_any_chunking_gives_the_same_cuts() -> None:
    audio = np.concatenate([silence(300), tone(800), silence(700), tone(500), silence(900)])
    expected = [(s.start, s.end) for s in segments(feed(Segmenter(), audio, chunk_ms=1000))]
    assert len(expected) == 2
    for chunk_ms in (7, 20, 33, 250):
        got = segments(feed(Segmenter(), audio, chunk_ms=chunk_ms))
        assert [(s.start, s.end) for s in got] == expected


def test_finals_tile_the_timeline() -> None:
    segmenter = Segmenter()
    audio = np.concatenate([tone(700), silence(800), tone(400), silence(650), tone(900)])
    cuts = segments(feed(segmenter, audio))
    last = segmenter.close()
    assert last is not None
    cuts.append(last)
    assert cuts[0].start == 0 and cuts[-1].end == len(audio)
    assert all(a.end == b.start for a, b in zip(cuts, cuts[1:], strict=False))
    assert cuts[-1].speech_final  # the call ended mid-utterance


def test_a_pause_shorter_than_endpointing_keeps_one_utterance() -> None:
    events = feed(Segmenter(), np.concatenate([tone(500), silence(400), tone(500), silence(700)]))
    assert len(segments(events)) == 1
    assert sum(isinstance(e, SpeechStarted) for e in events) == 1


def test_a_click_starts_no_utterance() -> None:
    segmenter = Segmenter(SegmenterConfig(min_speech_ms=60))
    assert feed(segmenter, np.concatenate([silence(200), tone(40), silence(1000)])) == []


def test_too_little_speech_is_not_decoded() -> None:
    config = SegmenterConfig(min_speech_ms=60, min_decode_speech_ms=200)
    events = feed(Segmenter(config), np.concatenate([tone(100), silence(800)]))
    [segment] = segments(events)
    assert segment.speech_final and not segment.has_speech


def test_steady_low_noise_is_not_speech() -> None:
    rng = np.random.default_rng(0)
    noise = (0.001 * rng.standard_normal(5 * SAMPLE_RATE)).astype(np.float32)  # about -60 dBFS
    assert feed(Segmenter(), noise) == []


def test_pending_is_the_utterance_so_far() -> None:
    segmenter = Segmenter(SegmenterConfig(preroll_ms=300))
    feed(segmenter, np.concatenate([silence(1000), tone(500)]))
    pending = segmenter.pending()
    assert pending is not None
    assert (pending.start, pending.end, pending.audio_start) == (0, 1500 * MS, 700 * MS)
    assert len(pending.audio) == segmenter.pending_samples() == 800 * MS


def test_a_long_utterance_is_cut_at_its_quietest_moment() -> None:
    config = SegmenterConfig(max_utterance_ms=5000)
    segmenter = Segmenter(config)
    # Continuous speech with a softer (still speech) stretch at 4.5-4.6 s.
    audio = np.concatenate([tone(4500), tone(100, amplitude=0.05), tone(3000), silence(700)])
    cuts = segments(feed(segmenter, audio))
    assert len(cuts) == 2
    forced, end = cuts
    assert not forced.speech_final and forced.has_speech
    assert 4500 * MS < forced.end <= 4600 * MS
    assert end.start == forced.end and end.speech_final
    assert end.audio_start == forced.end  # the utterance goes on: no pre-roll overlap


def test_endpointing_off_cuts_only_on_request() -> None:
    segmenter = Segmenter(SegmenterConfig(endpointing_ms=None))
    audio = np.concatenate([tone(500), silence(1500), tone(500), silence(1500)])
    assert segments(feed(segmenter, audio)) == []
    last = segmenter.close()
    assert last is not None and last.speech_final and last.has_speech
    assert last.audio_start == 0


def test_finalize_cuts_mid_utterance_and_the_endpoint_still_ends_it() -> None:
    segmenter = Segmenter()
    feed(segmenter, tone(1000))
    flushed = segmenter.finalize()
    assert flushed is not None
    assert flushed.from_finalize and not flushed.speech_final and flushed.has_speech
    assert flushed.end == 1000 * MS
    [end] = segments(feed(segmenter, silence(700)))
    # The utterance ends with a speech_final final, empty: its speech was all flushed.
    assert end.start == flushed.end and end.speech_final and not end.has_speech
    assert segmenter.finalize() is not None  # the silence after the endpoint
    assert segmenter.finalize() is None  # nothing new


def test_a_partial_frame_is_included_by_finalize() -> None:
    segmenter = Segmenter()
    segmenter.push(silence(10))  # half a frame
    assert segmenter.position == 10 * MS
    flushed = segmenter.finalize()
    assert flushed is not None and flushed.end == 10 * MS


def test_utterance_gap_follows_the_end_of_speech() -> None:
    segmenter = Segmenter(SegmenterConfig(endpointing_ms=600, utterance_end_ms=1000))
    events = feed(segmenter, np.concatenate([tone(500), silence(2000)]))
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStarted, Segment, UtteranceGap]
    gap = events[2]
    assert isinstance(gap, UtteranceGap) and gap.at == 1500 * MS
    # Only one per utterance.
    assert feed(segmenter, silence(3000)) == []


def test_bad_config_is_refused() -> None:
    with pytest.raises(ValueError):
        SegmenterConfig(max_utterance_ms=1000)
    with pytest.raises(ValueError):
        SegmenterConfig(preroll_ms=-1)
