"""The /client protocol's texts and its opt-in query, without sockets."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.client_protocol import (
    CLOSE,
    ClientOptions,
    call_list,
    parse_choice,
    parse_options,
    refusal,
)
from twilio_dg_proxy.exceptions import ClientProtocolError


def test_the_tutorial_texts_are_unchanged() -> None:
    assert call_list(["CA1", "CA2"]) == '["CA1", "CA2"]'
    assert call_list([]) == "[]"
    assert CLOSE == "close"


@pytest.mark.parametrize(
    ("target", "history"),
    [
        ("/client", False),
        ("/client?", False),
        ("/client?history=1", True),
        ("/client?history", True),
        ("/client?history=", True),
        ("/client?history=TRUE", True),
        ("/client?history=yes&token=abc", True),
        ("/client?history=0", False),
        ("/client?history=off", False),
        ("/client?history=1&history=0", False),  # the last one wins
        ("/client?token=abc&foo=bar&History=1", False),  # others ignored; names are exact
    ],
)
def test_history_is_opt_in_and_other_parameters_are_ignored(target: str, history: bool) -> None:
    assert parse_options(target) == ClientOptions(history=history)


@pytest.mark.parametrize("value", ["2", "maybe", "1%201"])
def test_a_history_value_that_is_not_yes_or_no_is_refused(value: str) -> None:
    with pytest.raises(ClientProtocolError, match="expected 1 or 0"):
        parse_options(f"/client?history={value}")


@given(st.text(max_size=60))
def test_any_target_gives_options_or_a_protocol_error(target: str) -> None:
    try:
        parse_options(target)
    except ClientProtocolError:
        pass


@pytest.mark.parametrize(("message", "call_sid"), [("CA1\n", "CA1"), ("  CA1 \r\n", "CA1")])
def test_a_choice_is_a_line_of_text_trimmed(message: str, call_sid: str) -> None:
    assert parse_choice(message) == call_sid


def test_a_binary_choice_is_refused() -> None:
    with pytest.raises(ClientProtocolError, match="expected a callSid as a text message"):
        parse_choice(b"CA1")


def test_a_refusal_says_why_and_for_an_unknown_call_which_calls_there_are() -> None:
    assert refusal("no callSid chosen within 300 s") == "error: no callSid chosen within 300 s"
    line = refusal("unknown callSid 'CAx': not an active call", ["CA1", "CA2"])
    assert (
        line == 'error: unknown callSid \'CAx\': not an active call; active calls: ["CA1", "CA2"]'
    )
    assert json.loads(line.partition("; active calls: ")[2]) == ["CA1", "CA2"]
    assert refusal("unknown callSid 'CAx': not an active call", []).endswith("active calls: []")
