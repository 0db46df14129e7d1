"""Phone numbers as people type them, and the calls that carry one (pure: no I/O).

A watcher may name a phone number instead of a callSid (`/client`, the viewer's `follow`,
`watch +15550100`). Twilio passes the call's numbers as custom parameters (`From`, `To` in
our TwiML, in E.164: `+15550100`); people type them with spaces, dashes, dots and
parentheses, and often without the country code.

The rule, documented in docs/protocols.md ("By phone number"):
- `parse` keeps the digits and a leading `+`; it accepts spaces, `-`, `.`, `(` and `)`
  between them, and nothing else, so a callSid (`CA…`) is never a number.
- Two numbers match when their digits are equal; or, when one of them was written without
  `+` (a national form), when its digits, leading zeros dropped (a trunk `0`, an
  international `00`), are the end of the other's and are at least `MIN_NATIONAL_DIGITS`
  long: `(555) 0100` matches `+15550100`. Two numbers written with `+` must be equal.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from .viewer_protocol import CallInfo

#: Separators people type between digits; ignored.
SEPARATORS: Final = frozenset(" \t-.()")
#: Fewer digits than this is no number (short codes have 3 or more).
MIN_DIGITS: Final = 3
#: More digits than this is no number (E.164 allows 15; an `00` prefix adds 2, some slack).
MAX_DIGITS: Final = 20
#: A national form (no `+`) matches the end of a longer number only from this many digits.
MIN_NATIONAL_DIGITS: Final = 7
#: The custom parameters that hold a call's numbers, unless NUMBER_PARAMETERS says otherwise.
DEFAULT_PARAMETERS: Final = ("From", "To")


@dataclass(frozen=True, slots=True)
class PhoneNumber:
    """A normalised phone number: its digits, and whether it was written with a leading `+`
    (then it includes the country code)."""

    digits: str
    international: bool

    def __str__(self) -> str:
        return f"+{self.digits}" if self.international else self.digits

    @property
    def significant(self) -> str:
        """The digits compared against the end of a longer number: a national form loses its
        leading zeros (trunk prefix `0`, international prefix `00`)."""
        return self.digits if self.international else self.digits.lstrip("0")


def parse(text: str) -> PhoneNumber | None:
    """The number `text` spells, or None if it is not one: surrounding whitespace ignored, an
    optional leading `+`, then digits with any of `SEPARATORS` between them, `MIN_DIGITS` to
    `MAX_DIGITS` digits in all. Never raises."""
    body = text.strip()
    international = body.startswith("+")
    if international:
        body = body[1:]
    digits = []
    for char in body:
        if "0" <= char <= "9":  # ASCII only: str.isdigit() would take other scripts' digits
            digits.append(char)
        elif char not in SEPARATORS:
            return None
    if not MIN_DIGITS <= len(digits) <= MAX_DIGITS:
        return None
    return PhoneNumber("".join(digits), international)


def same_number(a: PhoneNumber, b: PhoneNumber) -> bool:
    """Whether `a` and `b` are the same line, by the module's rule (symmetric)."""
    if a.digits == b.digits:
        return True
    if a.international and b.international:
        return False
    short, long = sorted((a.significant, b.significant), key=len)
    return len(short) >= MIN_NATIONAL_DIGITS and long.endswith(short)


def call_has(info: CallInfo, number: PhoneNumber, parameters: Iterable[str]) -> bool:
    """Whether one of the call's custom `parameters` (e.g. `From`, `To`) holds `number`."""
    return any(_holds(info.custom_parameters, name, number) for name in parameters)


def _holds(values: Mapping[str, str], name: str, number: PhoneNumber) -> bool:
    value = values.get(name)
    if value is None:
        return False
    found = parse(value)
    return found is not None and same_number(found, number)


def newest_with(
    calls: Iterable[CallInfo], number: PhoneNumber, parameters: Iterable[str]
) -> CallInfo | None:
    """The call with `number` that started last (on a tie, the last of `calls`, which the
    hub lists in the order it learnt of them), or None if no call has it."""
    names = tuple(parameters)
    newest: CallInfo | None = None
    for info in calls:
        if call_has(info, number, names) and (
            newest is None or info.started_at_ms >= newest.started_at_ms
        ):
            newest = info
    return newest
