"""The viewer protocol's texts, byte for byte (the browser viewer reads them), and its
commands: every text parses to a command or raises ClientProtocolError."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy import viewer_protocol
from twilio_dg_proxy.exceptions import ClientProtocolError
from twilio_dg_proxy.viewer_protocol import CallInfo, ViewerCommand, parse_command

INFO = CallInfo("CA1", {"From": "+1 555", 'x"é': "ü\n"}, ("inbound", "outbound"), 1_700_000_000_000)
INFO_TEXT = (
    '{"callSid": "CA1", "customParameters": {"From": "+1 555", "x\\"\\u00e9": "\\u00fc\\n"}, '
    '"tracks": ["inbound", "outbound"], "startedAt": 1700000000000}'
)
BARE_TEXT = '{"callSid": "CA0", "customParameters": {}, "tracks": [], "startedAt": 0}'
FINAL = '{"type":"Results","is_final":true,"channel":{"alternatives":[{"transcript":"two"}]}}'
UTTERANCE_END = '{"type": "UtteranceEnd", "channel": [0, 2]}'

# The exact texts the server sent before this module existed: the wire must not change.
EXACT = [
    (
        viewer_protocol.calls(123, [CallInfo("CA0"), INFO]),
        f'{{"type": "calls", "now": 123, "calls": [{BARE_TEXT}, {INFO_TEXT}]}}',
    ),
    (viewer_protocol.calls(5, []), '{"type": "calls", "now": 5, "calls": []}'),
    (viewer_protocol.call_started(INFO), f'{{"type": "call_started", "call": {INFO_TEXT}}}'),
    (
        viewer_protocol.call_ended("CA0", 1014, "Deepgram refused é"),
        '{"type": "call_ended", "callSid": "CA0", "code": 1014, '
        '"reason": "Deepgram refused \\u00e9"}',
    ),
    (
        viewer_protocol.subscribed("CA1", INFO, [UTTERANCE_END, FINAL], True),
        f'{{"type": "subscribed", "callSid": "CA1", "call": {INFO_TEXT}, '
        f'"historyTruncated": true, "history": [{UTTERANCE_END}, {FINAL}]}}',
    ),
    (
        viewer_protocol.subscribed("CA0", CallInfo("CA0"), [], False),
        f'{{"type": "subscribed", "callSid": "CA0", "call": {BARE_TEXT}, '
        '"historyTruncated": false, "history": []}',
    ),
    (
        viewer_protocol.deepgram("CA1", '{"type": "Metadata"}'),
        '{"type": "deepgram", "callSid": "CA1", "message": {"type": "Metadata"}}',
    ),
    (
        viewer_protocol.deepgram("CA1", "plain é"),
        '{"type": "deepgram", "callSid": "CA1", "message": "plain \\u00e9"}',
    ),
    (viewer_protocol.unsubscribed("CA9"), '{"type": "unsubscribed", "callSid": "CA9"}'),
    (
        viewer_protocol.error("CAx", 1008, "unknown callSid 'CAx': not an active call"),
        '{"type": "error", "callSid": "CAx", "code": 1008, '
        '"reason": "unknown callSid \'CAx\': not an active call"}',
    ),
]


@pytest.mark.parametrize(("built", "exact"), EXACT, ids=[json.loads(e)["type"] for _, e in EXACT])
def test_every_message_is_the_exact_text_the_viewer_reads(built: str, exact: str) -> None:
    assert built == exact


def test_a_deepgram_message_is_embedded_as_sent_not_re_encoded() -> None:
    text = '{"type":"Results",  "start": 1.50, "x": "\\u00e9"}'  # spacing, 1.50, escapes
    assert viewer_protocol.deepgram("CA1", text).endswith(f'"message": {text}}}')
    assert viewer_protocol.subscribed("CA1", INFO, [text], False).endswith(f"[{text}]}}")


def test_a_message_that_is_not_a_json_object_still_makes_a_valid_envelope() -> None:
    envelope = viewer_protocol.deepgram("CA1", 'not "json"')
    assert json.loads(envelope) == {"type": "deepgram", "callSid": "CA1", "message": 'not "json"'}


names = st.text(max_size=20)
objects = st.dictionaries(names, st.none() | st.booleans() | st.integers() | names, max_size=4)


@given(names, objects | names.filter(lambda t: not t.startswith("{")))
def test_any_call_and_any_deepgram_message_make_valid_json(
    call_sid: str, message: dict[str, object] | str
) -> None:
    text = message if isinstance(message, str) else json.dumps(message)
    assert json.loads(viewer_protocol.deepgram(call_sid, text)) == {
        "type": "deepgram",
        "callSid": call_sid,
        "message": message,
    }


@given(names, st.lists(objects, max_size=4), st.booleans(), st.dictionaries(names, names))
def test_a_snapshot_decodes_to_the_call_and_its_history_in_order(
    call_sid: str, history: list[dict[str, object]], truncated: bool, parameters: dict[str, str]
) -> None:
    info = CallInfo(call_sid, parameters, ("inbound",), 7)
    texts = [json.dumps(message, separators=(",", ":")) for message in history]
    assert json.loads(viewer_protocol.subscribed(call_sid, info, texts, truncated)) == {
        "type": "subscribed",
        "callSid": call_sid,
        "call": {
            "callSid": call_sid,
            "customParameters": parameters,
            "tracks": ["inbound"],
            "startedAt": 7,
        },
        "historyTruncated": truncated,
        "history": history,
    }


@given(names, st.integers(1000, 4999), names)
def test_call_ended_and_error_decode_to_their_fields(call_sid: str, code: int, reason: str) -> None:
    fields = {"callSid": call_sid, "code": code, "reason": reason}
    assert json.loads(viewer_protocol.call_ended(call_sid, code, reason)) == {
        "type": "call_ended",
        **fields,
    }
    assert json.loads(viewer_protocol.error(call_sid, code, reason)) == {"type": "error", **fields}


@pytest.mark.parametrize(
    ("message", "command"),
    [
        ('{"type": "subscribe", "callSid": "CA1"}', ViewerCommand("subscribe", "CA1")),
        ('{"type": "unsubscribe", "callSid": " CA1\\n"}', ViewerCommand("unsubscribe", "CA1")),
        ('{"callSid": "CA1", "type": "subscribe", "x": 1}', ViewerCommand("subscribe", "CA1")),
    ],
)
def test_commands_name_an_action_and_a_trimmed_callsid(
    message: str, command: ViewerCommand
) -> None:
    assert parse_command(message) == command


@pytest.mark.parametrize(
    ("message", "error"),
    [
        (b'{"type": "subscribe", "callSid": "CA1"}', "as a text message"),
        ("subscribe CA1", "expected a JSON command"),
        ('["subscribe", "CA1"]', "expected a JSON object"),
        ('{"type": "subscribe"}', "expected callSid, a string"),
        ('{"type": "subscribe", "callSid": "  "}', "expected callSid, a string"),
        ('{"type": "subscribe", "callSid": 1}', "expected callSid, a string"),
        ('{"type": "watch", "callSid": "CA1"}', "unknown command type 'watch'"),
        ('{"type": "follow", "callSid": "CA1"}', "expected number, a string"),
        ('{"type": "follow", "number": " "}', "expected number, a string"),
        ('{"callSid": "CA1"}', "unknown command type 'None'"),
        ('{"type": "' + "x" * 100 + '", "callSid": "CA1"}', "'" + "x" * 40 + "'$"),
    ],
)
def test_anything_else_is_a_protocol_error(message: str | bytes, error: str) -> None:
    with pytest.raises(ClientProtocolError, match=error):
        parse_command(message)


@given(st.text(max_size=200))
def test_any_text_is_a_command_or_a_protocol_error(message: str) -> None:
    try:
        command = parse_command(message)
    except ClientProtocolError:
        return
    assert command.action in ("subscribe", "unsubscribe") and command.call_sid.strip()


def test_nesting_deeper_than_the_parser_goes_is_a_protocol_error() -> None:
    with pytest.raises(ClientProtocolError, match="expected a JSON command"):
        parse_command("[" * 4000)  # within CLIENT_MAX_MESSAGE_BYTES
