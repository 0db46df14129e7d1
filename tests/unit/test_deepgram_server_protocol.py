"""The server side of Deepgram's live protocol: upgrade checks, query, controls, messages."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from websockets.datastructures import Headers

from twilio_dg_proxy.deepgram_server_protocol import (
    DATA_REASON,
    EMPTY_FRAME_REASON,
    Refusal,
    check_upgrade,
    control_type,
    finalize_channel,
    idle_deadline,
    iso_timestamp,
    metadata_message,
    parse_query,
    query_problem,
    refusal_body,
    refusal_headers,
    results_message,
    speech_started_message,
    utterance_end_message,
    words_for,
)

STEREO = "/v1/listen?encoding=mulaw&sample_rate=8000&channels=2&multichannel=true"
MONO = "/v1/listen?encoding=mulaw&sample_rate=8000&channels=1"
GOOD_KEY = Headers({"Authorization": "Token secret"})


# --- The upgrade ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", [STEREO, MONO, STEREO + "&model=nova-3&interim_results=true"])
def test_an_upgrade_for_this_projects_audio_is_accepted(path: str) -> None:
    assert check_upgrade(path, GOOD_KEY, api_key="secret") is None
    assert check_upgrade(path, Headers(), api_key=None) is None


def test_another_path_is_refused_with_404_before_anything_else() -> None:
    forced = Refusal(429, "Too Many Requests", "Too Many Requests: busy")
    refusal = check_upgrade("/v2/listen?x=1", Headers(), api_key="secret", forced=forced)
    assert refusal == Refusal(404, "NOT_FOUND", "Not Found: only /v1/listen exists")


def test_a_forced_refusal_comes_after_the_path_and_before_the_key_and_query() -> None:
    forced = Refusal(429, "Too Many Requests", "Too Many Requests: busy")
    assert check_upgrade("/v1/listen", Headers(), api_key="secret", forced=forced) is forced


@pytest.mark.parametrize(
    "headers",
    [
        Headers(),
        Headers({"Authorization": "Token wrong"}),
        Headers({"Authorization": "Bearer secret"}),
        Headers({"Authorization": "token secret"}),
    ],
)
def test_anything_but_the_exact_token_is_refused_with_401(headers: Headers) -> None:
    refusal = check_upgrade(STEREO, headers, api_key="secret")
    assert refusal == Refusal(401, "INVALID_AUTH", "Invalid credentials.")


def test_the_key_is_checked_before_the_query() -> None:
    refusal = check_upgrade("/v1/listen?encoding=linear16", Headers(), api_key="secret")
    assert refusal is not None and refusal.status == 401


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("sample_rate=8000&channels=1", "encoding must be mulaw"),
        ("encoding=linear16&sample_rate=8000&channels=1", "encoding must be mulaw"),
        ("encoding=mulaw&channels=1", "sample_rate must be 8000"),
        ("encoding=mulaw&sample_rate=16000&channels=1", "sample_rate must be 8000"),
        ("encoding=mulaw&sample_rate=8000", "channels must be 1 or 2"),
        ("encoding=mulaw&sample_rate=8000&channels=3&multichannel=true", "channels must be 1 or 2"),
        ("encoding=mulaw&sample_rate=8000&channels=2", "multichannel=true is required"),
        ("encoding=mulaw&sample_rate=8000&channels=2&multichannel=false", "multichannel=true"),
    ],
)
def test_a_query_for_other_audio_is_refused_with_400_naming_the_problem(
    query: str, problem: str
) -> None:
    found = query_problem(parse_query(f"/v1/listen?{query}"))
    assert found is not None and found.startswith(problem)
    refusal = check_upgrade(f"/v1/listen?{query}", Headers(), api_key=None)
    assert refusal == Refusal(400, "Bad Request", f"Bad Request: {found}")


def test_parse_query_keeps_blank_values_and_the_last_of_a_repeated_key() -> None:
    assert parse_query("/v1/listen?a=1&b=&a=2") == {"a": "2", "b": ""}
    assert parse_query("/v1/listen") == {}


def test_a_refusal_is_answered_with_deepgrams_json_body_and_headers() -> None:
    refusal = Refusal(401, "INVALID_AUTH", "Invalid credentials.")
    assert json.loads(refusal_body(refusal, request_id="r-1")) == {
        "err_code": "INVALID_AUTH",
        "err_msg": "Invalid credentials.",
        "request_id": "r-1",
    }
    assert refusal_headers(refusal, request_id="r-1") == {
        "Content-Type": "application/json",
        "dg-error": "Invalid credentials.",
        "dg-request-id": "r-1",
    }


# --- Client messages -----------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["KeepAlive", "Finalize", "CloseStream"])
def test_control_messages_are_recognised_by_their_type(kind: str) -> None:
    assert control_type(json.dumps({"type": kind})) == kind
    assert control_type(json.dumps({"type": kind, "channel": 1, "extra": [1]})) == kind


@pytest.mark.parametrize(
    "text",
    ["", "KeepAlive", "not json", "[]", '"KeepAlive"', "{}", '{"type": "Hello"}', '{"type": 1}'],
)
def test_other_texts_are_not_control_messages(text: str) -> None:
    assert control_type(text) is None


def test_the_close_reasons_lead_with_deepgrams_codes_and_fit_a_close_frame() -> None:
    assert DATA_REASON.startswith("DATA-0000")
    assert len(DATA_REASON.encode()) <= 123 and len(EMPTY_FRAME_REASON.encode()) <= 123


@pytest.mark.parametrize(
    ("text", "channel"),
    [
        ('{"type": "Finalize"}', None),
        ('{"type": "Finalize", "channel": 1}', 1),
        ('{"type": "Finalize", "channel": 0}', 0),
        ('{"type": "Finalize", "channel": true}', None),
        ('{"type": "Finalize", "channel": "1"}', None),
        ('{"type": "Finalize", "channel": 1.0}', None),
    ],
)
def test_finalize_names_one_integer_channel_or_all(text: str, channel: int | None) -> None:
    assert finalize_channel(text) == channel


def test_idle_deadline_runs_from_the_last_activity_once_audio_arrived() -> None:
    deadline, reason = idle_deadline(
        opened_at=0.0, last_activity=8.0, got_audio=True, idle_timeout_s=10.0
    )
    assert deadline == 18.0 and reason.startswith("NET-0001")


def test_idle_deadline_runs_from_the_opening_until_audio_arrives() -> None:
    deadline, reason = idle_deadline(
        opened_at=0.0, last_activity=8.0, got_audio=False, idle_timeout_s=10.0
    )
    assert deadline == 10.0 and reason.startswith("NET-0001") and "KeepAlive" in reason
    assert len(reason.encode()) <= 123


# --- Server messages -----------------------------------------------------------------------


def test_timestamps_are_iso_8601_in_utc_with_a_z() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    assert iso_timestamp(moment) == "2026-01-02T03:04:05.600000Z"
    elsewhere = moment.astimezone(timezone(timedelta(hours=2)))
    assert iso_timestamp(elsewhere) == "2026-01-02T03:04:05.600000Z"


def test_words_share_the_span_evenly_and_the_last_is_punctuated() -> None:
    words = words_for("ch0 w1 abcd", start=1.0, duration=0.3)
    assert [w["word"] for w in words] == ["ch0", "w1", "abcd"]
    assert [w["punctuated_word"] for w in words] == ["ch0", "w1", "abcd."]
    assert [w["start"] for w in words] == pytest.approx([1.0, 1.1, 1.2])
    assert [w["end"] for w in words] == pytest.approx([1.1, 1.2, 1.3])
    assert all(w["confidence"] == 0.99 for w in words)
    assert words_for("", start=0.0, duration=1.0) == []


def test_results_have_deepgrams_shape() -> None:
    message = results_message(
        transcript="hello there",
        channel=1,
        channels=2,
        start=0.5,
        duration=0.25,
        is_final=True,
        speech_final=False,
        from_finalize=True,
        request_id="r",
    )
    assert message == {
        "type": "Results",
        "channel_index": [1, 2],
        "duration": 0.25,
        "start": 0.5,
        "is_final": True,
        "speech_final": False,
        "from_finalize": True,
        "channel": {
            "alternatives": [
                {
                    "transcript": "hello there",
                    "confidence": 0.99,
                    "words": words_for("hello there", start=0.5, duration=0.25),
                }
            ]
        },
        "metadata": {
            "request_id": "r",
            "model_info": {"name": "fake", "version": "0", "arch": "fake"},
            "model_uuid": "00000000-0000-4000-8000-000000000000",
        },
    }


def test_results_take_the_callers_words_confidence_and_model() -> None:
    words = [{"word": "hi", "start": 0.0, "end": 0.1, "confidence": 0.5, "punctuated_word": "Hi"}]
    message = results_message(
        transcript="Hi",
        channel=0,
        channels=1,
        start=0.0,
        duration=1.0,
        is_final=False,
        speech_final=False,
        from_finalize=False,
        request_id="r",
        words=words,
        confidence=0.5,
        model_uuid="m",
        model_info={"name": "tiny"},
    )
    alternative = message["channel"]["alternatives"][0]
    assert (alternative["words"], alternative["confidence"]) == (words, 0.5)
    assert message["metadata"]["model_uuid"] == "m"
    assert message["metadata"]["model_info"] == {"name": "tiny"}


def test_an_empty_transcript_has_no_words_and_zero_confidence() -> None:
    message = results_message(
        transcript="",
        channel=0,
        channels=1,
        start=0.0,
        duration=1.0,
        is_final=True,
        speech_final=False,
        from_finalize=False,
        request_id="r",
    )
    alternative = message["channel"]["alternatives"][0]
    assert (alternative["transcript"], alternative["confidence"], alternative["words"]) == (
        "",
        0.0,
        [],
    )


def test_metadata_has_deepgrams_shape() -> None:
    message = metadata_message(
        request_id="r",
        created="2026-01-02T03:04:05Z",
        duration=1.5,
        channels=2,
        sha256="ab" * 32,
        model_uuid="m",
        model_info={"name": "tiny"},
    )
    assert message == {
        "type": "Metadata",
        "transaction_key": "deprecated",
        "request_id": "r",
        "sha256": "ab" * 32,
        "created": "2026-01-02T03:04:05Z",
        "duration": 1.5,
        "channels": 2,
        "models": ["m"],
        "model_info": {"m": {"name": "tiny"}},
    }


def test_speech_started() -> None:
    assert speech_started_message(channel=1, channels=2, timestamp=0.75) == {
        "type": "SpeechStarted",
        "channel": [1, 2],
        "timestamp": 0.75,
    }


def test_utterance_end() -> None:
    assert utterance_end_message(channel=0, channels=2, last_word_end=3.5) == {
        "type": "UtteranceEnd",
        "channel": [0, 2],
        "last_word_end": 3.5,
    }
