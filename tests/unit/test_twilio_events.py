"""Twilio Media Streams parser and stream order rules, checked against the simulated call."""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from twilio_dg_proxy import json_loads, twilio_events
from twilio_dg_proxy.exceptions import (
    InvalidText,
    MalformedMessage,
    TwilioProtocolError,
    UnexpectedEvent,
)
from twilio_dg_proxy.twilio_events import (
    MAX_PAYLOAD_BYTES,
    Connected,
    Dtmf,
    Mark,
    Media,
    MediaFormat,
    Start,
    Stop,
    Track,
    TwilioStream,
    UnknownEvent,
    parse_event,
)
from twilio_dg_proxy.twilio_simulator import (
    FRAME_BYTES,
    FRAME_MS,
    SILENCE,
    SimulatedCall,
    pattern,
)


@pytest.fixture(scope="module", autouse=True, params=["orjson", "json"])
def json_parser(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs with each JSON parser the module can use: orjson, a dependency where it
    has wheels, and the standard library, its fallback. Yields the parser's name."""
    if request.param == "orjson":
        loads = pytest.importorskip("orjson").loads
    else:
        loads = json_loads.std_loads
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(twilio_events, "_json_loads", loads)
        yield request.param


ACCOUNT = "AC" + "1" * 32
CALL = "CA" + "2" * 32
STREAM = "MZ" + "3" * 32
PAYLOAD = bytes(range(160))


def connected_message() -> dict[str, Any]:
    return {"event": "connected", "protocol": "Call", "version": "1.0.0"}


def start_message(sequence: str = "1", **start: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "accountSid": ACCOUNT,
        "streamSid": STREAM,
        "callSid": CALL,
        "tracks": ["inbound", "outbound"],
        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        "customParameters": {"From": "+15550100", "secret": "s3"},
    }
    body.update(start)
    return {"event": "start", "sequenceNumber": sequence, "start": body, "streamSid": STREAM}


def media_message(
    track: str = "inbound",
    chunk: Any = "1",
    timestamp: Any = "0",
    payload: bytes = PAYLOAD,
    sequence: Any = "2",
) -> dict[str, Any]:
    return {
        "event": "media",
        "sequenceNumber": sequence,
        "media": {
            "track": track,
            "chunk": chunk,
            "timestamp": timestamp,
            "payload": base64.b64encode(payload).decode(),
        },
        "streamSid": STREAM,
    }


def dtmf_message(sequence: str = "3") -> dict[str, Any]:
    return {
        "event": "dtmf",
        "sequenceNumber": sequence,
        "dtmf": {"track": "inbound_track", "digit": "5"},
        "streamSid": STREAM,
    }


def mark_message(sequence: str = "4") -> dict[str, Any]:
    return {
        "event": "mark",
        "sequenceNumber": sequence,
        "mark": {"name": "greeting done"},
        "streamSid": STREAM,
    }


def stop_message(sequence: str = "5") -> dict[str, Any]:
    return {
        "event": "stop",
        "sequenceNumber": sequence,
        "stop": {"accountSid": ACCOUNT, "callSid": CALL},
        "streamSid": STREAM,
    }


VALID_MESSAGES: list[dict[str, Any]] = [
    connected_message(),
    start_message(),
    media_message(),
    dtmf_message(),
    mark_message(),
    stop_message(),
]


def text(message: Any) -> str:
    return json.dumps(message)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def malformed(message: Any) -> str:
    """Parse `message` (JSON-encoded unless text), expecting MalformedMessage; return why."""
    raw = message if isinstance(message, str) else json.dumps(message)
    with pytest.raises(MalformedMessage) as info:
        parse_event(raw)
    return str(info.value)


def without(message: dict[str, Any], path: str) -> dict[str, Any]:
    """Return a copy of `message` with the dotted `path` removed."""
    message = copy.deepcopy(message)
    *parents, last = path.split(".")
    node = message
    for key in parents:
        node = node[key]
    del node[last]
    return message


def replaced(message: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """Return a copy of `message` with the dotted `path` set to `value`."""
    message = copy.deepcopy(message)
    *parents, last = path.split(".")
    node = message
    for key in parents:
        node = node[key]
    node[last] = value
    return message


# --- Each event, parsed --------------------------------------------------------------------


def test_connected_is_parsed_into_protocol_and_version() -> None:
    assert parse_event(text(connected_message())) == Connected(protocol="Call", version="1.0.0")


def test_start_is_parsed_into_sids_tracks_parameters_format_and_sequence_number() -> None:
    event = parse_event(text(start_message()))
    assert event == Start(
        stream_sid=STREAM,
        account_sid=ACCOUNT,
        call_sid=CALL,
        tracks=("inbound", "outbound"),
        custom_parameters={"From": "+15550100", "secret": "s3"},
        media_format=MediaFormat(encoding="audio/x-mulaw", sample_rate=8000, channels=1),
        sequence_number=1,
    )


@pytest.mark.parametrize(
    ("tracks", "expected"),
    [
        (["inbound"], ("inbound",)),
        (["outbound"], ("outbound",)),
        (["inbound", "outbound"], ("inbound", "outbound")),
        (["outbound", "inbound"], ("inbound", "outbound")),
    ],
)
def test_start_tracks_are_ordered_inbound_first(
    tracks: list[str], expected: tuple[Track, ...]
) -> None:
    event = parse_event(text(start_message(tracks=tracks)))
    assert isinstance(event, Start)
    assert event.tracks == expected


def test_start_without_custom_parameters_has_an_empty_mapping() -> None:
    event = parse_event(text(without(start_message(), "start.customParameters")))
    assert isinstance(event, Start)
    assert dict(event.custom_parameters) == {}


def test_start_custom_parameters_are_read_only_and_a_copy() -> None:
    event = parse_event(text(start_message()))
    assert isinstance(event, Start)
    with pytest.raises(TypeError):
        event.custom_parameters["From"] = "changed"  # type: ignore[index]
    assert event.custom_parameters["From"] == "+15550100"


def test_start_is_hashable_and_equal_only_with_equal_custom_parameters() -> None:
    first = parse_event(text(start_message()))
    second = parse_event(text(start_message()))
    other = parse_event(text(start_message(customParameters={"From": "+15550199"})))
    assert first == second
    assert hash(first) == hash(second)
    assert first != other
    assert len({first, second, other}) == 2


@pytest.mark.parametrize(
    "message", [connected_message(), start_message(), stop_message(), dtmf_message()]
)
def test_events_are_frozen_but_media(message: dict[str, Any]) -> None:
    """Media is not: it is made 100 times a second per call, at a third of the cost."""
    event = parse_event(text(message))
    field = next(iter(dataclasses.fields(event)))
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(event, field.name, None)


def test_each_event_class_names_its_wire_event() -> None:
    names = [type(parse_event(text(message))).event for message in VALID_MESSAGES]
    assert names == ["connected", "start", "media", "dtmf", "mark", "stop"]


def test_media_digit_strings_become_ints_and_payload_becomes_bytes() -> None:
    message = media_message("outbound", chunk="7", timestamp="140", sequence="9")
    assert parse_event(text(message)) == Media(
        track="outbound", chunk=7, timestamp_ms=140, payload=PAYLOAD, sequence_number=9
    )


def test_media_accepts_json_integers_for_counters() -> None:
    message = media_message(chunk=7, timestamp=140, sequence=9)
    event = parse_event(text(message))
    assert isinstance(event, Media)
    assert (event.chunk, event.timestamp_ms, event.sequence_number) == (7, 140, 9)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0", 0), ("007", 7), (0, 0), ("9" * 15, 10**15 - 1), (10**15 - 1, 10**15 - 1)],
)
def test_counters_accept_zero_leading_zeros_and_fifteen_digits(value: Any, expected: int) -> None:
    event = parse_event(text(media_message(timestamp=value)))
    assert isinstance(event, Media)
    assert event.timestamp_ms == expected


def test_media_accepts_an_empty_payload() -> None:
    event = parse_event(text(media_message(payload=b"")))
    assert isinstance(event, Media)
    assert event.payload == b""


def test_media_accepts_a_payload_of_the_maximum_size() -> None:
    event = parse_event(text(media_message(payload=b"\x01" * MAX_PAYLOAD_BYTES)))
    assert isinstance(event, Media)
    assert len(event.payload) == MAX_PAYLOAD_BYTES


@pytest.mark.parametrize("size", [MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES + 3, 10**6])
def test_media_rejects_a_payload_larger_than_the_maximum(size: int) -> None:
    reason = malformed(media_message(payload=b"\x01" * size))
    assert reason == f"media.payload: larger than {MAX_PAYLOAD_BYTES} bytes"


def test_dtmf_is_parsed_into_track_digit_and_sequence_number() -> None:
    assert parse_event(text(dtmf_message())) == Dtmf(
        track="inbound_track", digit="5", sequence_number=3
    )


def test_mark_is_parsed_into_name_and_sequence_number() -> None:
    assert parse_event(text(mark_message())) == Mark(name="greeting done", sequence_number=4)


def test_stop_is_parsed_into_sids_and_sequence_number() -> None:
    assert parse_event(text(stop_message())) == Stop(
        account_sid=ACCOUNT, call_sid=CALL, sequence_number=5
    )


@pytest.mark.parametrize("message", VALID_MESSAGES, ids=lambda m: str(m["event"]))
def test_unknown_fields_are_ignored(message: dict[str, Any]) -> None:
    extended = copy.deepcopy(message)
    extended["futureField"] = {"nested": [1, 2]}
    for value in extended.values():
        if isinstance(value, dict):
            value["futureField"] = None
    assert parse_event(text(extended)) == parse_event(text(message))


# --- Frames and JSON that are not messages -----------------------------------------------


@pytest.mark.parametrize(
    "message", [connected_message(), start_message(), media_message(), {"event": "new"}]
)
def test_utf8_bytes_parse_as_their_text(message: dict[str, Any]) -> None:
    raw = json.dumps(message, ensure_ascii=False)
    assert parse_event(raw.encode()) == parse_event(raw)


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b'{"event": "media\xc3"}', b'{"event": "\xed\xa0\x80"}', b'"\xf4\x90\x80\x80"'],
)
def test_bytes_that_are_not_utf8_are_invalid_text(raw: bytes) -> None:
    with pytest.raises(InvalidText, match="not valid UTF-8"):
        parse_event(raw)


@pytest.mark.parametrize("raw", ["", "{", "{'event': 'media'}", "nope", '{"event": "media"} x'])
def test_invalid_json_is_malformed(raw: str) -> None:
    assert malformed(raw).startswith("invalid JSON: ")


def test_deeply_nested_json_is_malformed_not_a_recursion_error(json_parser: str) -> None:
    reason = malformed("[" * 100_000 + "]" * 100_000)
    if json_parser == "json":
        assert reason == "invalid JSON: nested too deeply"
    else:  # orjson stops at 1024 levels and says so in its own words
        assert reason.startswith("invalid JSON: ")


def test_a_number_too_long_for_int_is_malformed() -> None:
    assert malformed('{"event": "media", "n": ' + "1" * 10_000 + "}").startswith("invalid JSON")


@pytest.mark.parametrize(
    ("raw", "kind"),
    [("[]", "an array"), ("1", "a number"), ("null", "null"), ('"media"', "a string")],
)
def test_json_that_is_not_an_object_is_malformed(raw: str, kind: str) -> None:
    assert malformed(raw) == f"expected a JSON object, got {kind}"


def test_a_message_without_event_is_malformed() -> None:
    assert malformed({"sequenceNumber": "1"}) == "event: missing"


@pytest.mark.parametrize("event", ["clear", "Media", "", "x" * 100])
def test_an_unknown_event_is_passed_on_not_refused(event: str) -> None:
    assert parse_event(json.dumps({"event": event})) == UnknownEvent(name=event[:32])


def test_an_unknown_event_is_allowed_before_and_after_start_but_not_after_stop() -> None:
    call = SimulatedCall()
    stream = TwilioStream()
    new = json.dumps({"event": "somethingNew", "sequenceNumber": "9"})
    assert isinstance(stream.receive(new), UnknownEvent)
    stream.receive(call.start())
    assert isinstance(stream.receive(new), UnknownEvent)
    stream.receive(call.stop())
    with pytest.raises(UnexpectedEvent):
        stream.receive(new)


@pytest.mark.parametrize(
    ("event", "kind"),
    [(None, "null"), (1, "a number"), (True, "true"), (["media"], "an array"), ({}, "an object")],
)
def test_an_event_that_is_not_a_string_is_malformed(event: Any, kind: str) -> None:
    assert malformed({"event": event}) == f"event: expected a string, got {kind}"


# --- Field errors ---------------------------------------------------------------------------

REQUIRED_FIELDS = [
    (connected_message(), "protocol", "connected.protocol"),
    (connected_message(), "version", "connected.version"),
    (start_message(), "sequenceNumber", "sequenceNumber"),
    (start_message(), "start", "start"),
    (start_message(), "start.streamSid", "start.streamSid"),
    (start_message(), "start.accountSid", "start.accountSid"),
    (start_message(), "start.callSid", "start.callSid"),
    (start_message(), "start.tracks", "start.tracks"),
    (start_message(), "start.mediaFormat", "start.mediaFormat"),
    (start_message(), "start.mediaFormat.encoding", "start.mediaFormat.encoding"),
    (media_message(), "sequenceNumber", "sequenceNumber"),
    (media_message(), "media", "media"),
    (media_message(), "media.track", "media.track"),
    (media_message(), "media.chunk", "media.chunk"),
    (media_message(), "media.timestamp", "media.timestamp"),
    (media_message(), "media.payload", "media.payload"),
    (dtmf_message(), "sequenceNumber", "sequenceNumber"),
    (dtmf_message(), "dtmf", "dtmf"),
    (dtmf_message(), "dtmf.track", "dtmf.track"),
    (dtmf_message(), "dtmf.digit", "dtmf.digit"),
    (mark_message(), "sequenceNumber", "sequenceNumber"),
    (mark_message(), "mark", "mark"),
    (mark_message(), "mark.name", "mark.name"),
    (stop_message(), "sequenceNumber", "sequenceNumber"),
    (stop_message(), "stop", "stop"),
    (stop_message(), "stop.accountSid", "stop.accountSid"),
    (stop_message(), "stop.callSid", "stop.callSid"),
]


@pytest.mark.parametrize(
    ("message", "path", "where"),
    REQUIRED_FIELDS,
    ids=[f"{m['event']}:{p}" for m, p, _ in REQUIRED_FIELDS],
)
def test_a_missing_required_field_is_named(message: dict[str, Any], path: str, where: str) -> None:
    assert malformed(without(message, path)) == f"{where}: missing"


BAD_COUNTS = [-5, "-5", 1.5, "1.5", 1e3, "1e3", True, False, "", " 1", "1 ", "+1", "0x10",
              "abc", "١٢", "²", "1" * 16, 10**15, None, [], {}, ["1"]]  # fmt: skip


@pytest.mark.parametrize("value", BAD_COUNTS, ids=repr)
@pytest.mark.parametrize(
    ("message", "path"),
    [
        (media_message(), "media.chunk"),
        (media_message(), "media.timestamp"),
        (media_message(), "sequenceNumber"),
        (start_message(), "sequenceNumber"),
        (dtmf_message(), "sequenceNumber"),
        (mark_message(), "sequenceNumber"),
        (stop_message(), "sequenceNumber"),
    ],
)
def test_a_counter_that_is_not_a_non_negative_integer_is_malformed(
    message: dict[str, Any], path: str, value: Any
) -> None:
    reason = malformed(replaced(message, path, value))
    assert reason.startswith(f"{path}: expected a string of digits, got ")


def test_a_counter_error_shows_the_bad_value() -> None:
    reason = malformed(media_message(timestamp=-5))
    assert reason == "media.timestamp: expected a string of digits, got -5"


STRING_FIELDS = [
    (connected_message(), "protocol"),
    (connected_message(), "version"),
    (start_message(), "start.streamSid"),
    (start_message(), "start.accountSid"),
    (start_message(), "start.callSid"),
    (media_message(), "media.payload"),
    (dtmf_message(), "dtmf.track"),
    (dtmf_message(), "dtmf.digit"),
    (mark_message(), "mark.name"),
    (stop_message(), "stop.accountSid"),
    (stop_message(), "stop.callSid"),
]


@pytest.mark.parametrize("value", [None, 1, True, [], {}, ["x"]], ids=repr)
@pytest.mark.parametrize(("message", "path"), STRING_FIELDS, ids=[p for _, p in STRING_FIELDS])
def test_a_string_field_of_another_type_is_malformed(
    message: dict[str, Any], path: str, value: Any
) -> None:
    reason = malformed(replaced(message, path, value))
    where = path if message["event"] != "connected" else f"connected.{path}"
    assert re.fullmatch(rf"{re.escape(where)}: expected a (non-empty )?string, got .+", reason)


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (start_message(), "start.streamSid"),
        (start_message(), "start.accountSid"),
        (start_message(), "start.callSid"),
        (stop_message(), "stop.accountSid"),
        (stop_message(), "stop.callSid"),
    ],
)
def test_an_empty_sid_is_malformed(message: dict[str, Any], path: str) -> None:
    assert malformed(replaced(message, path, "")) == f"{path}: expected a non-empty string, got ''"


@pytest.mark.parametrize(
    ("message", "path"),
    [
        (start_message(), "start"),
        (start_message(), "start.mediaFormat"),
        (start_message(), "start.customParameters"),
        (media_message(), "media"),
        (dtmf_message(), "dtmf"),
        (mark_message(), "mark"),
        (stop_message(), "stop"),
    ],
)
@pytest.mark.parametrize("value", [None, "x", 1, [], [{}]], ids=repr)
def test_an_object_field_of_another_type_is_malformed(
    message: dict[str, Any], path: str, value: Any
) -> None:
    reason = malformed(replaced(message, path, value))
    assert reason.startswith(f"{path}: expected an object, got ")


@pytest.mark.parametrize("track", ["inbound_track", "both", "INBOUND", "", None, 0, ["inbound"]])
def test_media_on_an_unknown_track_is_malformed(track: Any) -> None:
    reason = malformed(media_message(track=track))
    assert reason.startswith("media.track: expected 'inbound' or 'outbound', got ")


@pytest.mark.parametrize(
    ("tracks", "reason"),
    [
        ([], "start.tracks: empty"),
        (["inbound", "inbound"], "start.tracks: duplicate track"),
        (["inbound", "outbound", "inbound"], "start.tracks: duplicate track"),
        (["both_tracks"], "start.tracks: expected 'inbound' or 'outbound', got 'both_tracks'"),
        (["inbound", 1], "start.tracks: expected 'inbound' or 'outbound', got 1"),
        ([["inbound"]], "start.tracks: expected 'inbound' or 'outbound', got an array"),
        ("inbound", "start.tracks: expected an array, got a string"),
        (None, "start.tracks: expected an array, got null"),
        ({"inbound": 1}, "start.tracks: expected an array, got an object"),
    ],
)
def test_start_tracks_must_be_distinct_known_tracks(tracks: Any, reason: str) -> None:
    assert malformed(start_message(tracks=tracks)) == reason


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("encoding", "audio/l16"),
        ("encoding", "audio/x-MULAW"),
        ("sampleRate", 16000),
        ("sampleRate", "8000"),
        ("sampleRate", 8000.0),
        ("sampleRate", None),
        ("channels", 2),
        ("channels", True),
        ("channels", "1"),
    ],
)
def test_start_with_another_media_format_is_unsupported(field: str, value: Any) -> None:
    message = replaced(start_message(), f"start.mediaFormat.{field}", value)
    assert malformed(message).startswith("unsupported media format: ")


def test_start_media_format_without_sample_rate_is_unsupported() -> None:
    message = without(start_message(), "start.mediaFormat.sampleRate")
    assert malformed(message) == "unsupported media format: 'audio/x-mulaw' at null Hz"


@pytest.mark.parametrize("value", [1, None, True, [], {}], ids=repr)
def test_custom_parameters_must_map_strings_to_strings(value: Any) -> None:
    message = start_message(customParameters={"From": "+15550100", "n": value})
    assert malformed(message).startswith("start.customParameters.'n': expected a string, got ")


@pytest.mark.parametrize(
    "payload",
    ["a", "abc", "aGVsbG8", "aGVsbG8=\n", "aGVs bG8=", "!!!!", "aGVsbG8=====", "=", "é"],
    ids=repr,
)
def test_media_payload_that_is_not_strict_base64_is_malformed(payload: str) -> None:
    assert malformed(replaced(media_message(), "media.payload", payload)) == (
        "media.payload: invalid base64"
    )


@given(st.text(alphabet="AQgw+/=\n -_é", max_size=12) | st.binary(max_size=9).map(b64))
def test_media_payload_accepts_exactly_what_strict_base64_decoding_accepts(encoded: str) -> None:
    try:
        expected: bytes | None = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        expected = None
    raw = text(replaced(media_message(), "media.payload", encoded))
    if expected is None:
        assert malformed(raw) == "media.payload: invalid base64"
    else:
        event = parse_event(raw)
        assert isinstance(event, Media)
        assert event.payload == expected


def test_a_lone_surrogate_is_malformed(json_parser: str) -> None:
    # Not Unicode: orjson refuses it as JSON, json lets it through to the field's check.
    reason = malformed(replaced(media_message(), "media.payload", "\ud800"))
    if json_parser == "orjson":
        assert reason.startswith("invalid JSON: ")
    else:
        assert reason == "media.payload: invalid base64"


def test_a_deeply_nested_bad_value_is_named_by_its_kind() -> None:
    nested = "[" * 900 + "]" * 900
    raw = '{"event": "media", "media": {"track": ' + nested + "}}"
    assert malformed(raw) == "media.track: expected 'inbound' or 'outbound', got an array"


def test_error_messages_quote_long_values_shortly() -> None:
    reason = malformed(media_message(track="x" * 10_000))
    assert len(reason) < 100
    assert reason.endswith("...")


# --- Contract under fuzzing -----------------------------------------------------------------

EVENT_CLASSES = (Connected, Start, Media, Dtmf, Mark, Stop, UnknownEvent)
KNOWN_KEYS = sorted(
    {"event", "sequenceNumber", "streamSid", "protocol", "version", "media", "start", "dtmf"}
    | {"mark", "stop", "track", "chunk", "timestamp", "payload", "accountSid", "callSid"}
    | {"tracks", "mediaFormat", "customParameters", "encoding", "sampleRate", "channels"}
    | {"digit", "name"}
)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["media", "start", "inbound", "outbound", "audio/x-mulaw", "1", "AAAA"])
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def assert_contract(raw: str | bytes) -> None:
    """`parse_event` returns an event or raises a TwilioProtocolError fit for a close reason."""
    try:
        event = parse_event(raw)
    except TwilioProtocolError as exc:
        reason = str(exc)
        assert 0 < len(reason) <= 100, reason
        reason.encode()  # close reasons are UTF-8: no lone surrogates
    else:
        assert isinstance(event, EVENT_CLASSES)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Yield the path (keys and indices) of every value inside `node`."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, value in items:
        yield (*prefix, key)
        if isinstance(value, dict | list):
            yield from paths(value, (*prefix, key))


@st.composite
def mutated_messages(draw: st.DrawFn) -> str:
    """A valid message with up to three values deleted or replaced by arbitrary JSON."""
    message = copy.deepcopy(draw(st.sampled_from(VALID_MESSAGES)))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        candidates = list(paths(message))
        if not candidates:
            break
        *parents, last = draw(st.sampled_from(candidates))
        node = message
        for key in parents:
            node = node[key]
        if isinstance(node, dict) and draw(st.booleans()):
            del node[last]
        else:
            node[last] = draw(json_values)
    return json.dumps(message)


@given(st.text())
def test_any_text_gives_an_event_or_a_protocol_error(raw: str) -> None:
    assert_contract(raw)


@given(st.binary() | st.text().map(str.encode))
def test_any_bytes_give_an_event_or_a_protocol_error(raw: bytes) -> None:
    assert_contract(raw)


def outcome(raw: str | bytes) -> object:
    try:
        return parse_event(raw)
    except TwilioProtocolError as exc:
        return type(exc), str(exc)


@given(st.text(st.characters(exclude_categories=["Cs"])) | json_values.map(json.dumps))
def test_any_text_parses_the_same_as_its_utf8_bytes(raw: str) -> None:
    assert outcome(raw.encode()) == outcome(raw)


@given(json_values)
def test_any_json_value_gives_an_event_or_a_protocol_error(value: Any) -> None:
    assert_contract(json.dumps(value))


@given(
    st.sampled_from(["connected", "start", "media", "dtmf", "mark", "stop"]),
    st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=6),
)
def test_any_object_with_a_known_event_gives_an_event_or_a_protocol_error(
    event: str, fields: dict[str, Any]
) -> None:
    assert_contract(json.dumps({**fields, "event": event}))


@settings(max_examples=500)
@given(mutated_messages())
def test_any_mutated_valid_message_gives_an_event_or_a_protocol_error(raw: str) -> None:
    assert_contract(raw)


@settings(deadline=None)  # a list of messages, each parsed twice: slow on a busy machine
@given(st.lists(mutated_messages() | st.sampled_from(VALID_MESSAGES).map(json.dumps)))
def test_a_stream_of_any_messages_gives_events_or_protocol_errors(messages: list[str]) -> None:
    stream = TwilioStream()
    for raw in messages:
        before = (stream.start, stream.stopped)
        try:
            event = stream.receive(raw)
        except TwilioProtocolError:
            # Refused: the stream is as it was (a later `start` or `stop` still counts).
            assert (stream.start, stream.stopped) == before
            continue
        # What it yields is the message's own event, and the order rules record it.
        assert event == parse_event(raw)
        if isinstance(event, Start):
            assert before[0] is None and stream.start == event
        else:
            assert stream.start == before[0]
        assert stream.stopped == isinstance(event, Stop)


counters = st.integers(min_value=0, max_value=10**15 - 1)


@given(
    st.sampled_from(["inbound", "outbound"]),
    counters,
    counters,
    counters,
    st.binary(max_size=MAX_PAYLOAD_BYTES),
    st.booleans(),
)
def test_any_valid_media_round_trips(
    track: Track, chunk: int, timestamp: int, sequence: int, payload: bytes, as_text: bool
) -> None:
    def wire(n: int) -> str | int:
        return str(n) if as_text else n

    message = media_message(track, wire(chunk), wire(timestamp), payload, wire(sequence))
    assert parse_event(text(message)) == Media(track, chunk, timestamp, payload, sequence)


# --- TwilioStream: order rules --------------------------------------------------------------


def test_stream_accepts_a_whole_call_and_records_start_and_stop() -> None:
    stream = TwilioStream()
    assert stream.start is None
    assert not stream.stopped
    for message in VALID_MESSAGES[:-1]:
        stream.receive(text(message))
    assert stream.start == parse_event(text(start_message()))
    assert not stream.stopped
    assert isinstance(stream.receive(text(stop_message())), Stop)
    assert stream.stopped


def test_stream_does_not_require_connected() -> None:
    stream = TwilioStream()
    stream.receive(text(start_message()))
    assert isinstance(stream.receive(text(media_message())), Media)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (media_message(), "media before start"),
        (dtmf_message(), "dtmf before start"),
        (mark_message(), "mark before start"),
    ],
)
def test_stream_rejects_media_dtmf_and_mark_before_start(
    message: dict[str, Any], reason: str
) -> None:
    stream = TwilioStream()
    stream.receive(text(connected_message()))
    with pytest.raises(UnexpectedEvent, match=f"^{reason}$"):
        stream.receive(text(message))
    assert stream.start is None


def test_stream_rejects_a_second_start_and_keeps_the_first() -> None:
    stream = TwilioStream()
    stream.receive(text(start_message()))
    first = stream.start
    with pytest.raises(UnexpectedEvent, match="^second start$"):
        stream.receive(text(start_message(callSid="CA" + "9" * 32)))
    assert stream.start is first


def test_stream_rejects_connected_after_start() -> None:
    stream = TwilioStream()
    stream.receive(text(start_message()))
    with pytest.raises(UnexpectedEvent, match="^connected after start$"):
        stream.receive(text(connected_message()))


def test_stream_rejects_a_second_connected() -> None:
    stream = TwilioStream()
    stream.receive(text(connected_message()))
    with pytest.raises(UnexpectedEvent, match="^second connected$"):
        stream.receive(text(connected_message()))


@pytest.mark.parametrize("track", ["inbound", "outbound"])
def test_stream_rejects_media_on_a_track_not_announced_in_start(track: str) -> None:
    other = "outbound" if track == "inbound" else "inbound"
    stream = TwilioStream()
    stream.receive(text(start_message(tracks=[other])))
    assert isinstance(stream.receive(text(media_message(other))), Media)
    with pytest.raises(UnexpectedEvent, match=f"^media on track '{track}' not in start.tracks$"):
        stream.receive(text(media_message(track)))


@pytest.mark.parametrize("message", VALID_MESSAGES, ids=lambda m: str(m["event"]))
def test_stream_rejects_anything_after_stop(message: dict[str, Any]) -> None:
    stream = TwilioStream()
    stream.receive(text(start_message()))
    stream.receive(text(stop_message()))
    with pytest.raises(UnexpectedEvent, match=f"^{message['event']} after stop$"):
        stream.receive(text(message))


def test_stream_accepts_stop_before_start() -> None:
    stream = TwilioStream()
    stream.receive(text(connected_message()))
    stream.receive(text(stop_message()))
    assert stream.stopped
    assert stream.start is None


def test_stream_raises_parse_errors_and_keeps_going() -> None:
    stream = TwilioStream()
    stream.receive(text(start_message()))
    with pytest.raises(MalformedMessage):
        stream.receive("{")
    with pytest.raises(InvalidText):
        stream.receive(b"\xff")
    assert isinstance(stream.receive(text(media_message())), Media)


# --- The simulated call, message by message -------------------------------------------------


def test_simulated_call_sids_have_twilio_shape_and_differ() -> None:
    first, second = SimulatedCall(), SimulatedCall()
    for call in (first, second):
        assert re.fullmatch("CA[0-9a-f]{32}", call.call_sid)
        assert re.fullmatch("MZ[0-9a-f]{32}", call.stream_sid)
        assert re.fullmatch("AC[0-9a-f]{32}", call.account_sid)
    assert first.call_sid != second.call_sid


def test_simulated_messages_have_twilio_wire_shape() -> None:
    call = SimulatedCall()
    connected = json.loads(call.connected())
    start = json.loads(call.start())
    media = json.loads(call.media("inbound", 0, b"\xff" * 160))
    stop = json.loads(call.stop())
    assert connected == {"event": "connected", "protocol": "Call", "version": "1.0.0"}
    for message, sequence in ((start, "1"), (media, "2"), (stop, "3")):
        assert message["sequenceNumber"] == sequence
        assert message["streamSid"] == call.stream_sid
    assert start["start"]["streamSid"] == call.stream_sid
    assert start["start"]["mediaFormat"] == {
        "encoding": "audio/x-mulaw",
        "sampleRate": 8000,
        "channels": 1,
    }
    assert media["media"] == {
        "track": "inbound",
        "chunk": "1",
        "timestamp": "0",
        "payload": base64.b64encode(b"\xff" * 160).decode(),
    }


def test_simulated_media_counts_chunks_per_track() -> None:
    call = SimulatedCall()
    call.start()
    sent = [("inbound", 0), ("outbound", 0), ("inbound", 20), ("inbound", 40), ("outbound", 20)]
    chunks = []
    for track, timestamp in sent:
        event = parse_event(call.media(track, timestamp, b"\x01"))  # type: ignore[arg-type]
        assert isinstance(event, Media)
        chunks.append((event.track, event.chunk, event.sequence_number))
    assert chunks == [
        ("inbound", 1, 2),
        ("outbound", 1, 3),
        ("inbound", 2, 4),
        ("inbound", 3, 5),
        ("outbound", 2, 6),
    ]


def padded_frame(audio: bytes, index: int) -> bytes:
    frame = audio[index * FRAME_BYTES : (index + 1) * FRAME_BYTES]
    return frame + bytes([SILENCE]) * (FRAME_BYTES - len(frame))


def test_every_simulated_message_parses_into_the_expected_event() -> None:
    call = SimulatedCall(custom_parameters={"From": "+15550100", "role": "agent"})
    audio: dict[Track, bytes] = {
        "inbound": pattern("inbound", 10 * FRAME_BYTES + 37),  # 11 frames, last one padded
        "outbound": pattern("outbound", 6 * FRAME_BYTES),
    }
    drop: dict[Track, set[int]] = {"inbound": {0, 4, 5}, "outbound": {2}}
    start_ms: dict[Track, int] = {"inbound": 0, "outbound": 70}
    script = call.script(audio, drop=drop, start_ms=start_ms)

    both: tuple[Track, ...] = ("inbound", "outbound")
    expected_media: list[tuple[int, int, Track, int]] = sorted(
        (start_ms[track] + FRAME_MS * i, order, track, i)
        for order, track in enumerate(both)
        for i in range(-(-len(audio[track]) // FRAME_BYTES))
        if i not in drop[track]
    )
    assert len(script) == 2 + len(expected_media) + 1

    stream = TwilioStream()
    events = [stream.receive(message) for _, message in script]
    times = [send_time for send_time, _ in script]

    assert events[0] == Connected(protocol="Call", version="1.0.0")
    assert events[1] == Start(
        stream_sid=call.stream_sid,
        account_sid=call.account_sid,
        call_sid=call.call_sid,
        tracks=("inbound", "outbound"),
        custom_parameters={"From": "+15550100", "role": "agent"},
        media_format=MediaFormat("audio/x-mulaw", 8000, 1),
        sequence_number=1,
    )
    assert times[:2] == [0.0, 0.0]
    for n, (timestamp, _, track, i) in enumerate(expected_media):
        assert events[2 + n] == Media(
            track=track,
            chunk=i + 1,  # chunk numbers skip over lost frames, like timestamps
            timestamp_ms=timestamp,
            payload=padded_frame(audio[track], i),
            sequence_number=2 + n,
        )
        assert times[2 + n] == timestamp / 1000
    assert events[-1] == Stop(
        account_sid=call.account_sid,
        call_sid=call.call_sid,
        sequence_number=2 + len(expected_media),
    )
    assert times[-1] == pytest.approx(expected_media[-1][0] / 1000 + 0.02)
    assert stream.stopped


def test_simulated_frames_are_sent_in_timestamp_order_inbound_first_on_ties() -> None:
    call = SimulatedCall()
    call.start()
    frames = call.frames(
        {"outbound": pattern("outbound", 2 * FRAME_BYTES), "inbound": pattern("inbound", 320)},
        start_ms={"outbound": 0, "inbound": 20},
    )
    order = []
    for send_time, message in frames:
        event = parse_event(message)
        assert isinstance(event, Media)
        order.append((send_time, event.track, event.timestamp_ms))
    assert order == [
        (0.0, "outbound", 0),
        (0.02, "inbound", 20),
        (0.02, "outbound", 20),
        (0.04, "inbound", 40),
    ]


def test_simulated_last_frame_is_padded_with_silence() -> None:
    call = SimulatedCall()
    call.start()
    (_, message), *_ = call.frames({"inbound": b"\x01\x02\x03"})
    event = parse_event(message)
    assert isinstance(event, Media)
    assert event.payload == b"\x01\x02\x03" + bytes([SILENCE]) * (FRAME_BYTES - 3)


def test_simulated_script_without_audio_is_connected_start_stop() -> None:
    call = SimulatedCall(tracks=("inbound",))
    script = call.script({})
    events = [parse_event(message) for _, message in script]
    assert [type(event) for event in events] == [Connected, Start, Stop]
    assert [send_time for send_time, _ in script] == [0.0, 0.0, 0.02]
    assert isinstance(events[1], Start)
    assert events[1].tracks == ("inbound",)


def test_pattern_is_never_silence_and_tells_the_tracks_apart() -> None:
    inbound = pattern("inbound", 1000)
    outbound = pattern("outbound", 1000)
    assert len(inbound) == len(outbound) == 1000
    assert not {0x7F, 0xFF} & (set(inbound) | set(outbound))
    assert not set(inbound) & set(outbound)
    assert inbound[:FRAME_BYTES] != inbound[FRAME_BYTES : 2 * FRAME_BYTES]
    assert pattern("inbound", 10, offset=3) == inbound[3:13]
