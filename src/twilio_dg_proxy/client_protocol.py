"""The /client protocol (the tutorial's, for websocat and the like): the texts the server
sends besides Deepgram's own messages, the client's choice, and the opt-in query.

Pure: text in, values out; no sockets. A client that sends no query gets exactly the
tutorial's protocol (see `clients`); the additions below only answer what it opts into, or
explain a refusal that the tutorial would only close on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from .exceptions import ClientProtocolError

CLOSE = "close"  # the tutorial's last text of a call, before a normal close
HISTORY = "history"  # query parameter: replay the call's final results so far

_YES = frozenset({"1", "true", "yes", "on", ""})  # "" : a bare `?history`
_NO = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True, slots=True)
class ClientOptions:
    """What a /client connection opted into with its query string."""

    history: bool = False


def parse_options(target: str) -> ClientOptions:
    """The options in the query of the request target `target` (e.g. `/client?history=1`).

    `history` takes 1/true/yes/on (or no value) and 0/false/no/off; the last one given wins.
    Other parameters are ignored: they belong to other layers (`token`) or to no one, and a
    client that passes them today must keep the tutorial's protocol. Raises
    ClientProtocolError for any other value of `history`."""
    history = False
    for name, value in parse_qsl(urlsplit(target).query, keep_blank_values=True):
        if name != HISTORY:
            continue
        if value.lower() in _YES:
            history = True
        elif value.lower() in _NO:
            history = False
        else:
            raise ClientProtocolError(f"{HISTORY}={value[:20]!r}: expected 1 or 0")
    return ClientOptions(history=history)


def call_list(call_sids: Iterable[str]) -> str:
    """The first message: a JSON array of the active calls' callSids."""
    return json.dumps(list(call_sids))


def parse_choice(message: str | bytes) -> str:
    """The callSid a client chose: its text stripped of whitespace (websocat sends a line).
    Raises ClientProtocolError if the message is binary."""
    if not isinstance(message, str):
        raise ClientProtocolError("expected a callSid as a text message")
    return message.strip()


def refusal(reason: str, active: Iterable[str] | None = None) -> str:
    """The text sent before closing a client we refuse, so that someone watching websocat
    (which does not show close reasons) sees why: `error: <reason>`, and when the choice
    named no active call, the ones there are."""
    line = f"error: {reason}"
    if active is not None:
        line += f"; active calls: {call_list(active)}"
    return line
