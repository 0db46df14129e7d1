"""Phone numbers as people type them: parsing, the matching rule, and the newest call."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from twilio_dg_proxy.phone_numbers import (
    MAX_DIGITS,
    MIN_DIGITS,
    MIN_NATIONAL_DIGITS,
    PhoneNumber,
    call_has,
    newest_with,
    parse,
    same_number,
)
from twilio_dg_proxy.viewer_protocol import CallInfo

FROM_TO = ("From", "To")
digit_strings = st.text(alphabet="0123456789", min_size=MIN_DIGITS, max_size=MAX_DIGITS)
separators = st.text(alphabet=" -.()", max_size=3)


def number(text: str) -> PhoneNumber:
    parsed = parse(text)
    assert parsed is not None, text
    return parsed


@pytest.mark.parametrize(
    ("typed", "normalised"),
    [
        ("+15550100", "+15550100"),
        ("+1 555-0100", "+15550100"),
        (" +1 (555) 010.0\n", "+15550100"),
        ("(555) 0100", "5550100"),
        ("555-0100", "5550100"),
        ("911", "911"),
    ],
)
def test_typed_forms_normalise_to_digits_and_a_leading_plus(typed: str, normalised: str) -> None:
    assert str(number(typed)) == normalised


@pytest.mark.parametrize(
    "text",
    [
        "CA" + "0" * 32,  # a callSid is never a number
        "",
        "+",
        "12",  # too few digits
        "1" * (MAX_DIGITS + 1),
        "1+5550100",  # + only in front
        "++15550100",
        "+1 555 0100 ext 2",
        "client:alice",
        "٥٥٥٠١٠٠",  # digits of another script: not what Twilio sends
    ],
)
def test_anything_else_is_not_a_number(text: str) -> None:
    assert parse(text) is None


@given(st.text())
def test_parse_never_raises_and_keeps_only_ascii_digits(text: str) -> None:
    found = parse(text)
    if found is not None:
        assert found.digits.isascii() and found.digits.isdigit()
        assert MIN_DIGITS <= len(found.digits) <= MAX_DIGITS


@given(st.booleans(), digit_strings, st.lists(separators, min_size=1, max_size=25))
def test_separators_anywhere_between_digits_change_nothing(
    plus: bool, digits: str, seps: list[str]
) -> None:
    typed = "".join(sep + d for sep, d in zip(seps * len(digits), digits, strict=False))
    assert parse(("+" if plus else "") + typed) == PhoneNumber(digits, plus)


@given(digit_strings, st.booleans(), digit_strings, st.booleans())
def test_matching_is_symmetric(a: str, a_plus: bool, b: str, b_plus: bool) -> None:
    first, second = PhoneNumber(a, a_plus), PhoneNumber(b, b_plus)
    assert same_number(first, second) == same_number(second, first)


@given(digit_strings, st.booleans())
def test_a_number_matches_itself_however_written(digits: str, plus: bool) -> None:
    assert same_number(PhoneNumber(digits, plus), PhoneNumber(digits, plus))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("+1 555-0100", "+15550100"),
        ("(555) 0100", "+15550100"),  # the country code left out
        ("555.0100", "+1 555 0100"),
        ("15550100", "+15550100"),  # the + left out
        ("020 7946 0000", "+44 20 7946 0000"),  # a trunk 0
        ("0044 20 7946 0000", "+442079460000"),  # an international 00
    ],
)
def test_formatting_variants_match(a: str, b: str) -> None:
    assert same_number(number(a), number(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("+15550100", "+25550100"),  # both with +: the country code counts
        ("+15550100", "+5550100"),
        ("0100", "+15550100"),  # too short to stand for a longer number
        ("5550101", "+15550100"),
    ],
)
def test_other_numbers_do_not_match(a: str, b: str) -> None:
    assert not same_number(number(a), number(b))


def test_a_national_form_needs_min_national_digits() -> None:
    full = number("+1" + "2" * MIN_NATIONAL_DIGITS)
    assert same_number(PhoneNumber("2" * MIN_NATIONAL_DIGITS, False), full)
    assert not same_number(PhoneNumber("2" * (MIN_NATIONAL_DIGITS - 1), False), full)


def call(sid: str, started: int = 0, **parameters: str) -> CallInfo:
    return CallInfo(sid, parameters, ("inbound",), started)


def test_a_call_has_a_number_in_the_parameters_named() -> None:
    info = call("CA1", From="+15550100", To="+15550199", Agent="+15550142")
    assert call_has(info, number("555-0100"), FROM_TO)
    assert call_has(info, number("+15550199"), FROM_TO)
    assert not call_has(info, number("+15550142"), FROM_TO)
    assert call_has(info, number("+15550142"), ("Agent",))


def test_values_that_are_not_numbers_never_match() -> None:
    info = call("CA1", From="client:alice", To="sip:bob@example.com")
    assert not call_has(info, number("5550100"), FROM_TO)


def test_the_newest_call_with_the_number_is_chosen() -> None:
    calls = [
        call("CAold", 1000, From="+15550100"),
        call("CAnew", 3000, To="+15550100"),
        call("CAother", 4000, From="+15550199"),
        call("CAmid", 2000, From="+15550100"),  # learnt of later (a mirrored call), older
    ]
    found = newest_with(calls, number("(555) 0100"), FROM_TO)
    assert found is not None and found.call_sid == "CAnew"


def test_on_a_tie_the_last_listed_is_the_newest() -> None:
    calls = [call("CA1", 5, From="+15550100"), call("CA2", 5, From="+15550100")]
    found = newest_with(calls, number("+15550100"), FROM_TO)
    assert found is not None and found.call_sid == "CA2"


def test_no_call_with_the_number_is_none() -> None:
    assert newest_with([call("CA1", From="+15550199")], number("+15550100"), FROM_TO) is None
