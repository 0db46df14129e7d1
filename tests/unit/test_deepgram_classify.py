"""`deepgram_protocol.classify`: one look at each Deepgram message says what the hub's
history and the recorder need, exactly as their own searches and parses did before (kept
here as the reference)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy import json_loads
from twilio_dg_proxy.deepgram_protocol import OTHER, Kind, classify, result_transcript

# The reference: the hub's `is_history` and the recorder's filter, parse and checks, as they
# were before `classify` did both at once.
_MAYBE_HISTORY = re.compile(r'"is_final"\s*:\s*true|"UtteranceEnd"')
_FINAL_OR_METADATA = re.compile(r'"is_final"\s*:\s*true|"Metadata"')


def old_is_history(text: str) -> bool:
    if not _MAYBE_HISTORY.search(text):
        return False
    message = json_loads.object_or_none(text)
    if message is None:
        return False
    if message.get("type") == "UtteranceEnd":
        return True
    if message.get("type") != "Results" or message.get("is_final") is not True:
        return False
    if message.get("speech_final") is True:
        return True
    return bool(result_transcript(message))


def old_is_final_with_text(message: Mapping[str, Any]) -> bool:
    if message.get("type") != "Results" or message.get("is_final") is not True:
        return False
    return bool(result_transcript(message))


def old_request_id(message: Mapping[str, Any]) -> str:
    if message.get("type") == "Metadata":
        found = message.get("request_id")
    else:
        metadata = message.get("metadata")
        found = metadata.get("request_id") if isinstance(metadata, dict) else None
    return found if isinstance(found, str) else ""


def old_recorder(text: str) -> tuple[str, bool]:
    """The request id the recorder kept of `text`, and whether it recorded it as a final."""
    if not _FINAL_OR_METADATA.search(text):
        return "", False
    message = json_loads.object_or_none(text)
    if message is None:
        return "", False
    return old_request_id(message), old_is_final_with_text(message)


def expected(text: str) -> Kind:
    request_id, final_text = old_recorder(text)
    return Kind(old_is_history(text), final_text, request_id)


_ODD = st.one_of(st.none(), st.integers(-2, 2), st.text(max_size=5), st.booleans())
_TYPES = st.sampled_from(["Results", "UtteranceEnd", "Metadata", "SpeechStarted", "Other"])
_ALTERNATIVES = st.one_of(
    _ODD,
    st.lists(st.fixed_dictionaries({}, optional={"transcript": st.one_of(_ODD, st.text())})),
)
_CHANNEL = st.fixed_dictionaries({}, optional={"alternatives": _ALTERNATIVES})
_MESSAGES = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(_TYPES, _ODD),
        "is_final": _ODD,
        "speech_final": _ODD,
        "channel": st.one_of(_ODD, _CHANNEL),
        "request_id": _ODD,
        "metadata": st.one_of(_ODD, st.fixed_dictionaries({}, optional={"request_id": _ODD})),
        "note": st.sampled_from(['"Metadata"', "UtteranceEnd", '"is_final": true', "x"]),
    },
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


def _encodings(value: object) -> st.SearchStrategy[str]:
    return st.sampled_from(
        [
            json.dumps(value),
            json.dumps(value, separators=(",", ":")),
            json.dumps(value, indent=1),
            json.dumps(value, ensure_ascii=False),
        ]
    )


@given(_MESSAGES.flatmap(_encodings))
def test_classify_agrees_with_the_history_and_the_recorder_on_messages(text: str) -> None:
    assert classify(text) == expected(text)


@given(st.one_of(st.text(), _JSON.map(json.dumps)))
def test_classify_agrees_on_anything_else(text: str) -> None:
    assert classify(text) == expected(text)


@given(st.sampled_from(['"is_final"', '"UtteranceEnd"', '"Metadata"', "{", "true"]), st.text())
def test_classify_agrees_on_texts_that_pass_a_filter_but_do_not_parse(word: str, rest: str) -> None:
    for text in (word + rest, rest + word, "{" + word + ": true" + rest):
        assert classify(text) == expected(text)


def test_the_usual_messages() -> None:
    final = {
        "type": "Results",
        "is_final": True,
        "channel": {"alternatives": [{"transcript": " hi "}]},
        "metadata": {"request_id": "r1"},
    }
    assert classify(json.dumps(final)) == Kind(True, True, "r1")
    assert classify(json.dumps(final | {"is_final": False})) is OTHER
    empty = final | {"channel": {"alternatives": [{"transcript": ""}]}}
    assert classify(json.dumps(empty)) == Kind(False, False, "r1")
    assert classify(json.dumps(empty | {"speech_final": True})) == Kind(True, False, "r1")
    assert classify('{"type": "UtteranceEnd", "last_word_end": 1}') == Kind(history=True)
    assert classify('{"type": "Metadata", "request_id": "r2"}') == Kind(request_id="r2")
    assert classify('{"type": "SpeechStarted"}') is OTHER
