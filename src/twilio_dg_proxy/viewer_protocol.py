"""The viewer protocol (/viewer/ws): the JSON the server sends, and the commands it reads.

Pure: values in, text out (and text in, a command out); no sockets, no clock. The browser
viewer (`viewer/*.js`) and any program that speaks the protocol rely on these exact texts.

Server → viewer, one JSON object per text message, by `type`:
- `calls` {`now`, `calls`: [call]}: first, the active calls (`now`: the server's Unix time
  in milliseconds, so the viewer shows durations whatever its own clock says).
- `call_started` {`call`}; `call_ended` {`callSid`, `code`, `reason`}: calls come and go.
- `subscribed` {`callSid`, `call`, `historyTruncated`, `history`: [Deepgram message]}: the
  answer to `subscribe`, with the call's final results so far.
- `deepgram` {`callSid`, `message`}: one live Deepgram message of a followed call.
- `unsubscribed` {`callSid`}: the answer to `unsubscribe`.
- `error` {`callSid`, `code`, `reason`}: a `subscribe` that was refused (close-code values);
  {`number`, `code`, `reason`} for a `follow` that was.
- `followed` {`number`}, `unfollowed` {`number`}: the answers to `follow` and `unfollow`,
  with the number as the server compares it (digits, and `+` if it was written with one).

A call is {`callSid`, `customParameters`, `tracks`, `startedAt`}. A Deepgram message is
embedded as the JSON object it is (verbatim, not re-encoded), or as a string if it is not one.

Viewer → server: {"type": "subscribe" | "unsubscribe", "callSid": "CA..."};
{"type": "follow" | "unfollow", "number": "+15550100"} (subscribe to each call with that
number as it starts, and to those active now).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from .exceptions import ClientProtocolError


@dataclass(frozen=True, slots=True)
class CallInfo:
    """What a viewer is told about a call: its callSid, the stream's custom parameters
    (without the stream secret), its tracks, and when it started (Unix time, milliseconds)."""

    call_sid: str
    custom_parameters: Mapping[str, str] = field(default_factory=dict, hash=False)
    tracks: tuple[str, ...] = ()
    started_at_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        """The call as the viewer protocol sends it (a value for `json.dumps`)."""
        return {
            "callSid": self.call_sid,
            "customParameters": dict(self.custom_parameters),
            "tracks": list(self.tracks),
            "startedAt": self.started_at_ms,
        }


# Messages to viewers.


def calls(now_ms: int, infos: Iterable[CallInfo]) -> str:
    """`calls`: the first message a viewer gets, the calls active at `now_ms`."""
    return json.dumps({"type": "calls", "now": now_ms, "calls": [i.to_json() for i in infos]})


def call_started(info: CallInfo) -> str:
    """`call_started`: a call began streaming."""
    return json.dumps({"type": "call_started", "call": info.to_json()})


def call_ended(call_sid: str, code: int, reason: str) -> str:
    """`call_ended`: the call is over, with the close code and reason its /client
    subscribers got."""
    return json.dumps(
        {"type": "call_ended", "callSid": call_sid, "code": int(code), "reason": reason}
    )


def subscribed(call_sid: str, info: CallInfo, history: Iterable[str], truncated: bool) -> str:
    """`subscribed`: the call's description and its `history` (Deepgram messages, each a JSON
    object, embedded as they are); `truncated` says older ones were dropped."""
    return (
        f'{{"type": "subscribed", "callSid": {json.dumps(call_sid)}, '
        f'"call": {json.dumps(info.to_json())}, '
        f'"historyTruncated": {json.dumps(truncated)}, '
        f'"history": [{", ".join(history)}]}}'
    )


def deepgram(call_sid: str, text: str) -> str:
    """`deepgram`: one Deepgram message of the call, wrapped (see `embed`)."""
    return f'{{"type": "deepgram", "callSid": {json.dumps(call_sid)}, "message": {embed(text)}}}'


def unsubscribed(call_sid: str) -> str:
    """`unsubscribed`: the viewer no longer follows the call."""
    return json.dumps({"type": "unsubscribed", "callSid": call_sid})


def error(call_sid: str, code: int, reason: str) -> str:
    """`error`: a command about `call_sid` was refused, with the close code and reason a
    /client client would get for the same refusal."""
    return json.dumps({"type": "error", "callSid": call_sid, "code": int(code), "reason": reason})


def followed(number: str) -> str:
    """`followed`: each call with `number` is subscribed to as it starts."""
    return json.dumps({"type": "followed", "number": number})


def unfollowed(number: str) -> str:
    """`unfollowed`: calls with `number` are no longer subscribed to as they start (those
    already subscribed to go on)."""
    return json.dumps({"type": "unfollowed", "number": number})


def number_error(number: str, code: int, reason: str) -> str:
    """`error` about a `follow` (`number` as the viewer sent it, cut to 40 characters)."""
    return json.dumps({"type": "error", "number": number[:40], "code": int(code), "reason": reason})


def embed(text: str) -> str:
    """A Deepgram message as a JSON value: the object itself (Deepgram's text, not parsed
    and re-encoded: it is sent on as it came), or a JSON string if it is not an object."""
    return text if text[:1] == "{" else json.dumps(text)


# Commands from viewers.


@dataclass(frozen=True, slots=True)
class ViewerCommand:
    """A command of the viewer protocol: start or stop following a call (`call_sid`), or
    the calls of a phone number (`number`, as sent: the I/O layer parses it)."""

    action: Literal["subscribe", "unsubscribe", "follow", "unfollow"]
    call_sid: str = ""
    number: str = ""


def parse_command(message: str | bytes) -> ViewerCommand:
    """Parse `{"type": "subscribe" | "unsubscribe", "callSid": "CA..."}` (the callSid
    stripped of whitespace) or `{"type": "follow" | "unfollow", "number": "..."}` (any
    non-empty string: whether it is a phone number is the caller's to say); anything else
    raises ClientProtocolError."""
    if not isinstance(message, str):
        raise ClientProtocolError("expected a JSON command as a text message")
    try:
        command = json.loads(message)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than json goes
        raise ClientProtocolError("expected a JSON command") from None
    if not isinstance(command, dict):
        raise ClientProtocolError("expected a JSON object")
    action = command.get("type")
    if action in ("follow", "unfollow"):
        number = command.get("number")
        if not isinstance(number, str) or not number.strip():
            raise ClientProtocolError("expected number, a string")
        return ViewerCommand(action, number=number.strip())
    call_sid = command.get("callSid")
    if not isinstance(call_sid, str) or not call_sid.strip():
        raise ClientProtocolError("expected callSid, a string")
    if action == "subscribe":
        return ViewerCommand("subscribe", call_sid.strip())
    if action == "unsubscribe":
        return ViewerCommand("unsubscribe", call_sid.strip())
    raise ClientProtocolError(f"unknown command type {str(action)[:40]!r}")
