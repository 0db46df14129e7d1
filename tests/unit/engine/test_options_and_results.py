"""The engine's query options and the Deepgram messages it builds from decoded words."""

from __future__ import annotations

from typing import Any

import pytest

from twilio_dg_proxy.deepgram_server_protocol import results_message
from twilio_dg_proxy.engine.model import MODEL_INFO, MODEL_UUID, Word
from twilio_dg_proxy.engine.options import OptionError, StreamOptions
from twilio_dg_proxy.engine.results import bare_word, deepgram_words, engine_results
from twilio_dg_proxy.engine.segmenter import DEFAULT_ENDPOINTING_MS

STEREO = {"encoding": "mulaw", "sample_rate": "8000", "channels": "2", "multichannel": "true"}


def test_the_proxy_default_query_gives_interims_and_punctuation() -> None:
    query = STEREO | {"model": "nova-3", "interim_results": "true", "smart_format": "true"}
    options = StreamOptions.from_query(query)
    assert options == StreamOptions(
        channels=2,
        interim_results=True,
        punctuate=True,
        endpointing_ms=DEFAULT_ENDPOINTING_MS,
    )


@pytest.mark.parametrize(
    ("value", "expected"), [("false", None), ("true", DEFAULT_ENDPOINTING_MS), ("10", 300)]
)
def test_endpointing(value: str, expected: int | None) -> None:
    assert StreamOptions.from_query(STEREO | {"endpointing": value}).endpointing_ms == expected


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ({"endpointing": "soon"}, "endpointing"),
        ({"interim_results": "yes"}, "interim_results"),
        ({"utterance_end_ms": "1000"}, "requires interim_results=true"),
        ({"utterance_end_ms": "500", "interim_results": "true"}, "at least 1000"),
    ],
)
def test_bad_values_are_refused_naming_the_option(query: dict[str, str], problem: str) -> None:
    with pytest.raises(OptionError, match=problem):
        StreamOptions.from_query(STEREO | query)


def test_segmenter_config_follows_the_options() -> None:
    query = STEREO | {"endpointing": "800", "interim_results": "true", "utterance_end_ms": "1500"}
    config = StreamOptions.from_query(query).segmenter_config()
    assert (config.endpointing_ms, config.utterance_end_ms) == (800, 1500)


@pytest.mark.parametrize(
    ("text", "bare"),
    [("Hello,", "hello"), ("o'clock.", "o'clock"), ("4", "4"), ("...", ""), ("-Well", "well")],
)
def test_bare_word(text: str, bare: str) -> None:
    assert bare_word(text) == bare


def test_word_times_move_onto_the_stream_timeline_within_the_message() -> None:
    words = [Word("Hi,", 0.0, 0.4, 0.9), Word("you.", 0.4, 9.0, 0.5), Word("?", 1.0, 1.1, 0.1)]
    out = deepgram_words(words, offset=2.0, start=2.1, end=3.0)
    assert out == [
        {"word": "hi", "start": 2.1, "end": 2.4, "confidence": 0.9, "punctuated_word": "Hi,"},
        {"word": "you", "start": 2.4, "end": 3.0, "confidence": 0.5, "punctuated_word": "you."},
    ]


def results(punctuate: bool) -> dict[str, Any]:
    return engine_results(
        [Word("Good", 0.3, 0.6, 0.8), Word("evening.", 0.6, 1.2, 0.6)],
        offset=1.0,
        start=0.5,
        end=2.5,
        channel=1,
        channels=2,
        is_final=True,
        speech_final=True,
        from_finalize=False,
        punctuate=punctuate,
        request_id="r",
    )


def test_results_have_deepgram_fields_like_the_fake() -> None:
    message = results(punctuate=True)
    fake = results_message(
        transcript="x",
        channel=0,
        channels=2,
        start=0,
        duration=1,
        is_final=True,
        speech_final=True,
        from_finalize=False,
        request_id="r",
    )
    assert message.keys() == fake.keys()
    assert message["channel_index"] == [1, 2]
    assert (message["start"], message["duration"]) == (0.5, 2.0)
    alternative = message["channel"]["alternatives"][0]
    assert alternative["transcript"] == "Good evening."
    assert alternative["confidence"] == pytest.approx(0.7)
    assert [w["start"] for w in alternative["words"]] == [1.3, 1.6]
    assert message["metadata"]["model_uuid"] == MODEL_UUID
    assert message["metadata"]["model_info"] == dict(MODEL_INFO)


def test_without_punctuation_the_transcript_is_the_bare_words() -> None:
    assert results(punctuate=False)["channel"]["alternatives"][0]["transcript"] == "good evening"


def test_no_words_is_an_empty_transcript_with_zero_confidence() -> None:
    message = engine_results(
        [],
        offset=0,
        start=0,
        end=1,
        channel=0,
        channels=1,
        is_final=True,
        speech_final=False,
        from_finalize=True,
        punctuate=True,
        request_id="r",
    )
    alternative = message["channel"]["alternatives"][0]
    assert (alternative["transcript"], alternative["confidence"], alternative["words"]) == (
        "",
        0.0,
        [],
    )
    assert message["from_finalize"] is True


def test_whisper_pieces_without_a_leading_space_continue_the_previous_word() -> None:
    from twilio_dg_proxy.engine.model import Word, join_word_pieces

    pieces = [
        (" at", 0.0, 0.2, 0.9),
        (" 8", 0.2, 0.4, 0.8),
        (" o", 0.4, 0.5, 0.7),
        ("'clock.", 0.5, 0.9, 0.6),
    ]
    assert join_word_pieces(pieces) == [
        Word("at", 0.0, 0.2, 0.9),
        Word("8", 0.2, 0.4, 0.8),
        Word("o'clock.", 0.4, 0.9, 0.6),
    ]
    assert join_word_pieces([("'tis", 0.0, 0.3, 0.5)]) == [Word("'tis", 0.0, 0.3, 0.5)]
