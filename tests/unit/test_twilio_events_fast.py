"""The fast path of media messages (`media_fields`, `TwilioStream.media`) against the full
parser: wherever the fast path answers, `parse_event` gives a `Media` with the same values;
wherever `parse_event` gives one with counters as strings (as Twilio sends them), the fast
path answers. Run with each JSON parser (the fixture of test_twilio_events)."""

from __future__ import annotations

import base64
import json
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twilio_dg_proxy.exceptions import TwilioProtocolError
from twilio_dg_proxy.twilio_events import (
    MAX_PAYLOAD_BYTES,
    Media,
    TwilioStream,
    media_fields,
    parse_event,
)
from twilio_dg_proxy.twilio_simulator import SimulatedCall

from .test_twilio_events import (  # json_parser: autouse, runs each test with each parser
    PAYLOAD,
    STREAM,
    VALID_MESSAGES,
    json_parser,  # noqa: F401
    json_values,
    media_message,
    mutated_messages,
    outcome,
    start_message,
    stop_message,
)


def assert_agrees(raw: str | bytes) -> tuple[Any, ...] | None:
    """`media_fields(raw)` matches `parse_event(raw)`; returns the fields."""
    fields = media_fields(raw)
    if fields is not None:
        event = parse_event(raw)  # raises nothing: the fast path answered
        assert type(event) is Media
        assert fields == (event.track, event.timestamp_ms, event.payload)
    return fields


def twilio_wire(message: dict[str, Any], *, compact: bool = True) -> bytes:
    """`message` as Twilio writes it: compact, in this key order, ASCII."""
    separators = (",", ":") if compact else (", ", ": ")
    return json.dumps(message, separators=separators).encode()


# --- Examples -----------------------------------------------------------------------------


@pytest.mark.parametrize("compact", [True, False], ids=["twilio", "simulator"])
def test_twilio_layout_takes_the_fast_path(compact: bool) -> None:
    raw = twilio_wire(media_message("outbound", "7", "140", b"\x01\x02\xff"), compact=compact)
    assert assert_agrees(raw) == ("outbound", 140, b"\x01\x02\xff")
    assert assert_agrees(raw.decode()) == ("outbound", 140, b"\x01\x02\xff")


def test_simulated_media_takes_the_fast_path() -> None:
    call = SimulatedCall()
    call.start()
    assert assert_agrees(call.media("inbound", 20, bytes(160))) == ("inbound", 20, bytes(160))


LAYOUT = twilio_wire(media_message()).decode()


@pytest.mark.parametrize(
    "raw",
    [
        # Other key orders, whitespace, escapes, extra keys, unicode: still media.
        json.dumps(json.loads(LAYOUT), indent=2),
        LAYOUT.replace(",", " ,\n\t"),
        json.dumps(dict(reversed(json.loads(LAYOUT).items()))),
        LAYOUT.replace('"inbound"', '"\\u0069nbound"'),
        LAYOUT.replace('"event"', '"ev\\u0065nt"'),
        LAYOUT.replace('{"event"', '{"x":"é","event"'),
        LAYOUT.replace('"chunk":"1"', '"chunk":"0001"'),
        # Duplicate keys: the last one counts, for both.
        LAYOUT.replace('"chunk":"1"', '"chunk":"x","chunk":"1"'),
        LAYOUT.replace('"timestamp":"0"', '"timestamp":"5","timestamp":"9"'),
        LAYOUT.replace('{"event":"media"', '{"event":"stop","event":"media"'),
        LAYOUT.replace('"track":"inbound"', '"track":"inbound","track":"outbound"'),
    ],
)
def test_any_layout_of_a_valid_media_message_takes_the_fast_path(raw: str) -> None:
    assert assert_agrees(raw) is not None
    assert assert_agrees(raw.encode()) is not None


@pytest.mark.parametrize(
    "raw",
    [
        LAYOUT.replace('{"event":"media"', '{"event":"media","event":"stop"'),
        LAYOUT.replace('"track":"inbound"', '"track":"inbound_track"'),
        LAYOUT.replace('"track":"inbound"', '"track":"INBOUND"'),
        LAYOUT.replace('"track":"inbound"', '"track":["inbound"]'),
        LAYOUT.replace('"chunk":"1"', '"chunk":"1","chunk":""'),
        LAYOUT.replace('"chunk":"1"', '"chunk":1'),  # valid, but JSON integers: full path
        LAYOUT.replace('"chunk":"1"', '"chunk":"-1"'),
        LAYOUT.replace('"chunk":"1"', '"chunk":"1 "'),
        LAYOUT.replace('"timestamp":"0"', '"timestamp":"1234567890123456"'),
        LAYOUT.replace('"timestamp":"0"', '"timestamp":"١"'),
        LAYOUT.replace('"sequenceNumber":"2"', '"sequenceNumber":"2.0"'),
        LAYOUT.replace('"sequenceNumber":"2",', ""),
        LAYOUT.replace('"payload":"', '"payload":"!'),
        LAYOUT.replace('"payload":"', '"payload":"A'),
        LAYOUT.replace('"payload":"', '"payload":"\\n'),
        LAYOUT.replace('"payload":"', '"payload":"é'),
        LAYOUT[:-1],
        LAYOUT + "x",
        "[" + LAYOUT + "]",
    ],
)
def test_anything_else_is_left_to_the_full_parser(raw: str) -> None:
    assert media_fields(raw) is None
    assert media_fields(raw.encode()) is None


@pytest.mark.parametrize("payload", ["", "AA==", "AAA=", "AAAA", "/+/+"])
def test_payload_padding_and_the_empty_payload(payload: str) -> None:
    message = json.loads(LAYOUT)
    message["media"]["payload"] = payload
    assert assert_agrees(twilio_wire(message)) == ("inbound", 0, base64.b64decode(payload))


def test_payload_size_limits_are_the_full_parsers() -> None:
    for size, fast in [(MAX_PAYLOAD_BYTES, True), (MAX_PAYLOAD_BYTES + 1, False)]:
        raw = twilio_wire(media_message(payload=bytes(size)))
        assert (assert_agrees(raw) is not None) == fast


def test_invalid_utf8_is_left_to_the_full_parser_and_a_lone_surrogate_agrees() -> None:
    assert media_fields(LAYOUT.encode().replace(b"MZ", b"M\xff")) is None
    assert_agrees(LAYOUT.replace(STREAM, "\ud800"))  # orjson refuses it, json takes it


# --- Properties ---------------------------------------------------------------------------

digits = st.from_regex(r"[0-9]{1,16}", fullmatch=True)
counters = (
    digits
    | st.integers(min_value=-5, max_value=10**16)
    | st.text(max_size=4)
    | st.sampled_from(["0", "007", "", " 1", "1e3", "٣", "+1", "-1"])
)
tracks = st.sampled_from(["inbound", "outbound", "inbound_track", "", "Inbound"]) | st.text(
    max_size=9
)
payloads = (
    st.binary(max_size=400).map(lambda b: base64.b64encode(b).decode())
    | st.text(alphabet="AQgw+/=\n \\-_é", max_size=12)
    | st.sampled_from(["", "=", "AA=", "AA==", "AAA=", "A===", "AAAA===="])
)


@st.composite
def media_variants(draw: st.DrawFn) -> str | bytes:
    """Media messages with varied values, key orders, whitespace, escapes and extra keys."""
    media: dict[str, Any] = {
        "track": draw(tracks),
        "chunk": draw(counters),
        "timestamp": draw(counters),
        "payload": draw(payloads),
    }
    message: dict[str, Any] = {
        "event": draw(st.sampled_from(["media", "media", "Media", "stop"])),
        "sequenceNumber": draw(counters),
        "media": media,
        "streamSid": draw(st.sampled_from([STREAM, "", "MZ-é"])),
    }
    for node in (message, media):
        for key in draw(st.lists(st.sampled_from(list(node)), max_size=2, unique=True)):
            del node[key]
        node.update(draw(st.dictionaries(st.text(max_size=5), json_values, max_size=2)))
        if draw(st.booleans()):
            items = list(node.items())
            random.Random(draw(st.integers())).shuffle(items)
            node.clear()
            node.update(items)
    text = json.dumps(
        message,
        ensure_ascii=draw(st.booleans()),
        indent=draw(st.sampled_from([None, None, 0, 2])),
        separators=draw(st.sampled_from([None, (",", ":"), (" ,", " : ")])),
    )
    return text.encode() if draw(st.booleans()) else text


@settings(max_examples=1000)
@given(media_variants())
def test_any_media_variant_agrees_with_the_full_parser(raw: str | bytes) -> None:
    fields = assert_agrees(raw)
    event = outcome(raw)
    if type(event) is Media and fields is None:  # then a counter was a JSON integer
        message = json.loads(raw)
        counts = [message["sequenceNumber"], *map(message["media"].get, ["chunk", "timestamp"])]
        assert any(type(count) is int for count in counts)


@st.composite
def mutated_twilio_bytes(draw: st.DrawFn) -> bytes:
    """Twilio's exact bytes with a few bytes replaced, deleted or inserted."""
    raw = bytearray(twilio_wire(media_message(), compact=draw(st.booleans())))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        at = draw(st.integers(min_value=0, max_value=len(raw)))
        what = draw(st.sampled_from(["replace", "delete", "insert"]))
        some = draw(st.binary(min_size=1, max_size=3) | st.sampled_from([b'"', b"\\", b" "]))
        if what == "insert":
            raw[at:at] = some
        elif what == "delete":
            del raw[at : at + len(some)]
        else:
            raw[at : at + len(some)] = some
    return bytes(raw)


@settings(max_examples=1000)
@given(mutated_twilio_bytes())
def test_any_mutation_of_twilios_bytes_agrees_with_the_full_parser(raw: bytes) -> None:
    assert_agrees(raw)


@given(st.binary() | st.text() | mutated_messages())
def test_any_bytes_or_text_agree_with_the_full_parser(raw: str | bytes) -> None:
    assert_agrees(raw)


# --- TwilioStream.media: the order rules on the fast path -----------------------------------


def test_stream_takes_media_fast_only_between_start_and_stop_on_announced_tracks() -> None:
    raw = twilio_wire(media_message("outbound"))
    stream = TwilioStream()
    assert stream.media(raw) is None  # before start: `receive` says why
    stream.receive(json.dumps(start_message(tracks=["inbound"])))
    assert stream.media(raw) is None  # not announced
    assert stream.media(twilio_wire(media_message("inbound"))) == ("inbound", 0, PAYLOAD)
    stream.receive(json.dumps(stop_message()))
    assert stream.media(twilio_wire(media_message("inbound"))) is None  # after stop


def stream_outcome(stream: TwilioStream, raw: str | bytes, fast: bool) -> object:
    """What the stream makes of `raw`: the way the intake takes it, or `receive` alone."""
    fields = stream.media(raw) if fast else None
    if fields is not None:
        return fields
    try:
        event = stream.receive(raw)
    except TwilioProtocolError as exc:
        return type(exc), str(exc)
    if type(event) is Media:
        return event.track, event.timestamp_ms, event.payload
    return event


@settings(deadline=None)
@given(
    st.lists(
        media_variants()
        | mutated_twilio_bytes()
        | mutated_messages()
        | st.sampled_from(VALID_MESSAGES).map(twilio_wire)
        | st.sampled_from([start_message(tracks=["inbound"]), start_message()]).map(json.dumps),
        max_size=12,
    )
)
def test_a_stream_gives_the_same_with_and_without_the_fast_path(messages: list[str]) -> None:
    fast, full = TwilioStream(), TwilioStream()
    for raw in messages:
        assert stream_outcome(fast, raw, True) == stream_outcome(full, raw, False)
        assert (fast.start, fast.stopped) == (full.start, full.stopped)
