"""The /calls API's requests and answers: query parsing, the cursor, formats, downloads."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.calls_protocol import (
    FORMATS,
    GetCall,
    GetTranscript,
    ListCalls,
    attachment,
    decode_cursor,
    encode_cursor,
    is_calls_path,
    page_body,
    parse_request,
)
from twilio_dg_proxy.exceptions import BadCallsRequest
from twilio_dg_proxy.store.base import CallPage, CallQuery, Cursor
from twilio_dg_proxy.transcripts import FinishedCall
from twilio_dg_proxy.viewer_protocol import CallInfo


@given(ended_at=st.integers(0, 2**63 - 1), call_sid=st.text())
def test_a_cursor_reads_back_as_written(ended_at: int, call_sid: str) -> None:
    cursor = Cursor(ended_at, call_sid)
    text = encode_cursor(cursor)
    assert decode_cursor(text) == cursor
    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@given(st.text())
def test_any_text_as_a_cursor_is_a_cursor_or_a_bad_request(text: str) -> None:
    try:
        cursor = decode_cursor(text)
    except BadCallsRequest:
        return
    assert isinstance(cursor.ended_at_ms, int) and isinstance(cursor.call_sid, str)


@pytest.mark.parametrize("raw", ["[1]", '["1", "CA"]', '[-1, "CA"]', '[true, "CA"]', "{}"])
def test_json_that_is_not_a_cursor_is_refused(raw: str) -> None:
    import base64

    with pytest.raises(BadCallsRequest, match="before"):
        decode_cursor(base64.urlsafe_b64encode(raw.encode()).decode())


def test_the_listing_reads_limit_cursor_and_filters_and_ignores_the_token() -> None:
    cursor = encode_cursor(Cursor(5, "CA9"))
    wanted = parse_request(f"/calls?limit=10&before={cursor}&From=%2B15550100&token=t&To=")
    assert wanted == ListCalls(CallQuery(10, Cursor(5, "CA9"), (("From", "+15550100"), ("To", ""))))
    assert parse_request("/calls") == ListCalls(CallQuery(50, None, ()))


@pytest.mark.parametrize(
    "query", ["limit=0", "limit=501", "limit=x", "limit=", "limit=-1", "limit=1e2", "before=zz"]
)
def test_a_bad_limit_or_cursor_is_a_bad_request(query: str) -> None:
    with pytest.raises(BadCallsRequest):
        parse_request(f"/calls?{query}")


def test_a_filter_given_twice_or_too_many_filters_are_bad_requests() -> None:
    with pytest.raises(BadCallsRequest, match="twice"):
        parse_request("/calls?From=a&From=b")
    with pytest.raises(BadCallsRequest, match="at most"):
        parse_request("/calls?" + "&".join(f"p{i}=v" for i in range(9)))


def test_a_call_and_its_transcript_are_named_by_their_path() -> None:
    assert parse_request("/calls/CA1") == GetCall("CA1")
    assert parse_request("/calls/CA%201") == GetCall("CA 1")
    assert parse_request("/calls/CA1/transcript") == GetTranscript("CA1", FORMATS["json"], False)
    assert parse_request("/calls/CA1/transcript?format=txt&download=1") == GetTranscript(
        "CA1", FORMATS["txt"], True
    )
    for name in ("vtt", "srt"):
        wanted = parse_request(f"/calls/CA1/transcript?format={name}")
        assert wanted == GetTranscript("CA1", FORMATS[name], False)
    for other in ("/calls/", "/calls/CA1/other", "/calls/CA1/transcript/x", "/calls//x"):
        assert parse_request(other) is None


def test_only_calls_paths_are_the_apis() -> None:
    assert is_calls_path("/calls") and is_calls_path("/calls/CA1/transcript")
    assert not is_calls_path("/callsx") and not is_calls_path("/")


@pytest.mark.parametrize("query", ["format=xml", "format=", "download=maybe"])
def test_a_bad_format_or_download_is_a_bad_request(query: str) -> None:
    with pytest.raises(BadCallsRequest):
        parse_request(f"/calls/CA1/transcript?{query}")


def test_a_download_is_named_after_the_call_in_safe_characters() -> None:
    assert attachment("CA123", "txt") == 'attachment; filename="CA123.txt"'
    assert attachment('CA"; x=../', "vtt") == 'attachment; filename="CA___x____.vtt"'


def test_a_page_lists_summaries_and_the_next_cursor() -> None:
    call = FinishedCall(CallInfo("CA1", {}, ("inbound",), 1_000), 4_000, 1000, "call ended")
    body = page_body(CallPage((call,), Cursor(4_000, "CA1")))
    assert body["calls"] == [call.summary()]
    assert isinstance(body["next"], str) and decode_cursor(body["next"]) == Cursor(4_000, "CA1")
    assert page_body(CallPage((), None)) == {"calls": [], "next": None}
