"""Webhooks on the wire: the events, signing and verifying, and the retry policy."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks import Webhook, WebhookVerificationError

from twilio_dg_proxy.config import WEBHOOK_EVENT_NAMES
from twilio_dg_proxy.exceptions import InvalidWebhook
from twilio_dg_proxy.transcripts import FinishedCall, transcript_json
from twilio_dg_proxy.viewer_protocol import CallInfo
from twilio_dg_proxy.webhook_protocol import (
    Answered,
    Delivered,
    EventType,
    GiveUp,
    RetryIn,
    Timing,
    Unreachable,
    backoff_s,
    call_ended,
    call_started,
    is_retryable,
    new_event_id,
    next_step,
    retry_after_s,
    signed_headers,
    signing_key,
    transcript_final,
    verify,
)

SECRET = "s3cret-s3cret-s3cret"
NOW = 1_700_000_000
INFO = CallInfo("CA1", {"From": "+15550100", "CalleeName": "Ada"}, ("inbound", "outbound"), 1_000)
TIMING = Timing(backoff_base_s=1.0, backoff_max_s=30.0, retry_after_max_s=60.0)


def result(text: str, *, channel: int = 0, start: float = 0.0) -> str:
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [channel, 2],
            "start": start,
            "duration": 1.5,
            "is_final": True,
            "channel": {"alternatives": [{"transcript": text}]},
        }
    )


FINALS = (result("hello", start=0.0), result("hi there", channel=1, start=0.5))
CALL = FinishedCall(INFO, 9_000, 1000, "call ended", ("req-1",), FINALS)


def signed(secret: str, body: bytes, event_id: str = "evt_1", at: int = NOW) -> dict[str, str]:
    return signed_headers(signing_key(secret), event_id, at, body)


# Events.


def test_event_types_are_the_settings_event_names() -> None:
    assert set(get_args(EventType)) == set(WEBHOOK_EVENT_NAMES)


def test_call_started_carries_the_call_info_in_the_envelope() -> None:
    event = call_started(INFO, event_id="evt_a", now_ms=5)
    assert (event.id, event.type, event.call_sid) == ("evt_a", "call.started", "CA1")
    assert json.loads(event.body) == {
        "id": "evt_a",
        "type": "call.started",
        "createdAt": 5,
        "data": INFO.to_json(),
    }


def test_call_ended_carries_the_whole_transcript() -> None:
    event = call_ended(CALL, event_id="evt_b", now_ms=9_001)
    body = json.loads(event.body)
    assert (body["id"], body["type"], body["createdAt"]) == ("evt_b", "call.ended", 9_001)
    assert body["data"] == transcript_json(CALL)
    assert [r["channel"]["alternatives"][0]["transcript"] for r in body["data"]["results"]] == [
        "hello",
        "hi there",
    ]


def test_transcript_final_carries_the_result_and_its_line_as_call_ended_shows_it() -> None:
    lines = transcript_json(CALL)["segments"]
    for text, line in zip(FINALS, lines, strict=True):
        event = transcript_final(INFO, text, event_id="evt_c", now_ms=7)
        data = json.loads(event.body)["data"]
        assert data == {"callSid": "CA1", "segment": line, "result": json.loads(text)}
    assert lines[1]["speaker"] == "Ada"  # named by the CalleeName custom parameter


def test_a_final_without_words_has_no_segment() -> None:
    event = transcript_final(INFO, result(""), event_id="evt_d", now_ms=7)
    assert json.loads(event.body)["data"]["segment"] is None


def test_event_ids_are_unique_and_free_of_the_signed_contents_separator() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("evt_") and "." not in i for i in ids)


# Signatures.


def test_a_plain_secret_is_its_utf8_bytes_and_a_whsec_secret_what_it_encodes() -> None:
    assert signing_key("ünïcode-secret-16") == "ünïcode-secret-16".encode()
    raw = bytes(range(32))
    assert signing_key("whsec_" + base64.b64encode(raw).decode()) == raw
    assert signing_key("whsec_" + base64.b64encode(raw).decode().rstrip("=")) == raw


@pytest.mark.parametrize("secret", ["whsec_not*base64!", "whsec_"])
def test_an_unusable_whsec_secret_is_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="whsec_"):
        signing_key(secret)


secrets = st.one_of(
    st.text(min_size=16, max_size=64).filter(lambda s: not s.startswith("whsec_")),
    st.binary(min_size=1, max_size=64).map(lambda b: "whsec_" + base64.b64encode(b).decode()),
)
bodies = st.binary(max_size=2048)
event_ids = st.from_regex(r"evt_[0-9a-f]{1,32}", fullmatch=True)


@given(secret=secrets, body=bodies, event_id=event_ids, skew=st.integers(-300, 300))
def test_verify_accepts_what_was_signed_within_the_tolerance(
    secret: str, body: bytes, event_id: str, skew: int
) -> None:
    verify(secret, signed(secret, body, event_id), body, now=NOW + skew)


@given(secret=secrets, body=bodies.filter(bool), data=st.data())
def test_verify_rejects_any_tampered_byte_of_the_body(
    secret: str, body: bytes, data: st.DataObject
) -> None:
    headers = signed(secret, body)
    index = data.draw(st.integers(0, len(body) - 1))
    flip = data.draw(st.integers(1, 255))
    tampered = body[:index] + bytes([body[index] ^ flip]) + body[index + 1 :]
    with pytest.raises(InvalidWebhook, match="no matching signature"):
        verify(secret, headers, tampered, now=NOW)


@given(secret=secrets, body=bodies, extra=st.binary(min_size=1, max_size=8))
def test_verify_rejects_a_body_cut_or_lengthened(secret: str, body: bytes, extra: bytes) -> None:
    headers = signed(secret, body + extra)
    with pytest.raises(InvalidWebhook):
        verify(secret, headers, body, now=NOW)
    with pytest.raises(InvalidWebhook):
        verify(secret, signed(secret, body), body + extra, now=NOW)


@given(body=bodies, other=secrets)
def test_verify_rejects_another_secret(body: bytes, other: str) -> None:
    if signing_key(other) == signing_key(SECRET):
        return
    with pytest.raises(InvalidWebhook, match="no matching signature"):
        verify(other, signed(SECRET, body), body, now=NOW)


def test_the_id_and_timestamp_are_signed_too() -> None:
    body = b'{"x":1}'
    headers = signed(SECRET, body)
    with pytest.raises(InvalidWebhook):
        verify(SECRET, headers | {"webhook-id": "evt_2"}, body, now=NOW)
    with pytest.raises(InvalidWebhook):
        verify(SECRET, headers | {"webhook-timestamp": str(NOW + 1)}, body, now=NOW)


@pytest.mark.parametrize("skew", [-301, 301, 10_000])
def test_verify_rejects_a_timestamp_outside_the_tolerance(skew: int) -> None:
    body = b"{}"
    with pytest.raises(InvalidWebhook, match="replay"):
        verify(SECRET, signed(SECRET, body, at=NOW), body, now=NOW + skew)
    verify(SECRET, signed(SECRET, body, at=NOW), body, now=NOW + skew, tolerance_s=abs(skew))


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-id": ""},
        {"webhook-timestamp": ""},
        {"webhook-signature": ""},
        {"webhook-timestamp": "1.7e9"},
        {"webhook-timestamp": "-5"},
        {"webhook-timestamp": "١٧٠٠٠٠٠٠٠٠"},  # digits, but not ASCII ones
        {"webhook-signature": "v1,"},
        {"webhook-signature": "v2," + "A" * 44},
    ],
)
def test_verify_rejects_missing_or_malformed_headers(change: dict[str, str]) -> None:
    body = b"{}"
    with pytest.raises(InvalidWebhook):
        verify(SECRET, signed(SECRET, body) | change, body, now=NOW)


def test_verify_reads_header_names_in_any_case_and_any_of_several_signatures() -> None:
    body = b'{"a":"b"}'
    headers = signed(SECRET, body)
    rotated = signed("an-older-secret-of-ours", body)["webhook-signature"]
    received = {
        "Webhook-Id": headers["webhook-id"],
        "WEBHOOK-TIMESTAMP": headers["webhook-timestamp"],
        "Webhook-Signature": f"{rotated} {headers['webhook-signature']}",
    }
    verify(SECRET, received, body, now=NOW)


@pytest.mark.parametrize(
    ("secret", "library_secret"),
    [
        (SECRET, SECRET.encode()),  # a plain secret: its bytes, for the library
        ("whsec_" + base64.b64encode(b"k" * 24).decode(),) * 2,  # the specification's form
    ],
)
def test_the_standard_webhooks_reference_library_verifies_our_signatures(
    secret: str, library_secret: str | bytes
) -> None:
    body = call_ended(CALL, event_id=new_event_id(), now_ms=1).body
    event_id = json.loads(body)["id"]
    headers = signed(secret, body, event_id, at=int(time.time()))
    library = Webhook(library_secret)
    assert library.verify(body, headers) == json.loads(body)
    with pytest.raises(WebhookVerificationError):
        library.verify(body.replace(b"hello", b"jello"), headers)


# Retries.


@pytest.mark.parametrize(
    ("outcome", "retryable"),
    [
        (Unreachable("ConnectError"), True),
        (Unreachable("no answer within 5 s"), True),
        (Answered(500), True),
        (Answered(502), True),
        (Answered(503), True),
        (Answered(599), True),
        (Answered(429), True),
        (Answered(400), False),
        (Answered(401), False),
        (Answered(403), False),
        (Answered(404), False),
        (Answered(408), False),
        (Answered(410), False),
        (Answered(413), False),
        (Answered(301), False),
        (Answered(307), False),
    ],
)
def test_which_failures_are_retried(outcome: Answered | Unreachable, retryable: bool) -> None:
    assert is_retryable(outcome) is retryable


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_any_2xx_delivers(status: int) -> None:
    assert next_step(Answered(status), 1, 8, TIMING, NOW, lambda: 0.5) == Delivered()


def test_a_permanent_failure_is_given_up_at_once() -> None:
    step = next_step(Answered(400), 1, 8, TIMING, NOW, lambda: 0.5)
    assert step == GiveUp("HTTP 400, not retried")


def test_retries_stop_after_the_last_attempt() -> None:
    steps = [next_step(Answered(503), n, 3, TIMING, NOW, lambda: 0.5) for n in (1, 2, 3)]
    assert steps == [
        RetryIn(0.5, "HTTP 503"),
        RetryIn(1.0, "HTTP 503"),
        GiveUp("HTTP 503 after 3 attempt(s)"),
    ]


def test_a_single_attempt_setting_never_retries() -> None:
    step = next_step(Unreachable("ConnectError"), 1, 1, TIMING, NOW, lambda: 0.5)
    assert step == GiveUp("ConnectError after 1 attempt(s)")


@given(attempt=st.integers(1, 200), fraction=st.floats(0.0, 1.0, exclude_max=True))
def test_backoff_is_full_jitter_under_an_exponential_bound_with_a_cap(
    attempt: int, fraction: float
) -> None:
    bound = min(TIMING.backoff_max_s, TIMING.backoff_base_s * 2.0 ** (attempt - 1))
    delay = backoff_s(attempt, TIMING, lambda: fraction)
    assert 0.0 <= delay <= bound
    assert delay == pytest.approx(fraction * bound)


def test_retry_after_is_honoured_within_its_cap() -> None:
    def after(value: str) -> RetryIn | Delivered | GiveUp:
        return next_step(Answered(429, value), 1, 8, TIMING, NOW, lambda: 0.0)

    assert after("7") == RetryIn(7.0, "HTTP 429")
    assert after("3600") == RetryIn(TIMING.retry_after_max_s, "HTTP 429")
    assert after("soon") == RetryIn(0.0, "HTTP 429")  # unreadable: the backoff (jitter 0)
    # On a 503 too, as HTTP says.
    assert next_step(Answered(503, "2"), 1, 8, TIMING, NOW, lambda: 0.0) == RetryIn(2.0, "HTTP 503")


def test_retry_after_reads_seconds_and_http_dates() -> None:
    later = format_datetime(datetime.fromtimestamp(NOW + 90, UTC), usegmt=True)
    earlier = format_datetime(datetime.fromtimestamp(NOW - 90, UTC), usegmt=True)
    assert retry_after_s("120", NOW) == 120.0
    assert retry_after_s(" 5 ", NOW) == 5.0
    assert retry_after_s(later, NOW) == pytest.approx(90.0)
    assert retry_after_s(earlier, NOW) == 0.0
    for unreadable in (None, "", "-5", "1.5", "soon", "Wed, 99 Foo 2024", "٣"):
        assert retry_after_s(unreadable, NOW) is None
