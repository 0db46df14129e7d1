"""The project's exceptions and the one table that maps them to WebSocket close codes.

The table is applied only at the I/O edge (`call.py`, `clients.py`): the pure modules raise,
the socket layers close with `close_frame_for(exc)`.
"""

from __future__ import annotations

from websockets.frames import CloseCode

# RFC 6455 limits a close reason to 123 bytes of UTF-8.
_MAX_REASON_BYTES = 123


class ProxyError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(ProxyError):
    """A setting has a bad value; `variable` names it."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


class TwilioProtocolError(ProxyError):
    """Twilio sent something that breaks the Media Streams protocol."""


class MalformedMessage(TwilioProtocolError):
    """A message is not valid JSON, or a field is missing or has the wrong type or value."""


class UnexpectedEvent(TwilioProtocolError):
    """A well-formed event arrived out of order (`media` before `start`, a second `start`...)."""


class UnsupportedFrame(TwilioProtocolError):
    """A binary frame arrived where only JSON text is allowed."""


class InvalidText(TwilioProtocolError):
    """A text message is not valid UTF-8 (RFC 6455 requires it)."""


class DuplicateCall(ProxyError):
    """A second stream announced a callSid that is already streaming."""


class UnknownCall(ProxyError):
    """A client asked for a callSid that is not active."""


class TooManySubscribers(ProxyError):
    """A call already has MAX_SUBSCRIBERS_PER_CALL subscribers."""


class Unauthorized(ProxyError):
    """A stream did not carry the configured secret."""


class NoCallInTime(ProxyError):
    """A /client client waited for a call with its phone number, and none started in time:
    a normal end (1000), not a fault."""


class ClientProtocolError(ProxyError):
    """A /client peer sent something other than a callSid as text."""


class DeepgramError(ProxyError):
    """The Deepgram link failed: refused at the upgrade, or closed mid-call."""


class DeepgramRefused(DeepgramError):
    """Deepgram answered the upgrade with an HTTP error status."""

    def __init__(self, status: int, dg_error: str, request_id: str) -> None:
        detail = dg_error or "no dg-error header"
        super().__init__(f"Deepgram refused the connection: HTTP {status}: {detail}")
        self.status = status
        self.dg_error = dg_error
        self.request_id = request_id


class DeepgramClosed(DeepgramError):
    """Deepgram closed the stream (or the network dropped it) before we asked it to."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"Deepgram closed the stream: code {code}: {reason or 'no reason'}")
        self.code = code
        self.reason = reason


class DeepgramUnavailable(DeepgramError):
    """Deepgram could not be reached (network error or timeout)."""


class DeepgramNotConfigured(DeepgramError):
    """The proxy is not set up to use Deepgram (no API key for Deepgram's cloud)."""


class BrokerUnavailable(ProxyError):
    """Redis (REDIS_URL) could not be reached: at start, or to load a call streamed by
    another instance."""


class InvalidWebhook(ProxyError):
    """A webhook request failed verification (`webhook_protocol.verify`): a header missing
    or malformed, no matching signature, or a timestamp outside the tolerance (a replay)."""


class StoreError(ProxyError):
    """The transcript store could not do what was asked, and trying again will not help
    (e.g. a call it cannot hold)."""


class StoreUnavailable(StoreError):
    """The transcript store cannot be reached or cannot write now (down, locked, full):
    worth retrying. At start: the store could not be opened."""


class BadCallsRequest(ProxyError):
    """A request to the /calls API is malformed (HTTP 400): a bad limit, cursor or format."""


# Most specific first: the first matching row wins.
CLOSE_CODES: tuple[tuple[type[BaseException], CloseCode], ...] = (
    (UnsupportedFrame, CloseCode.UNSUPPORTED_DATA),
    (InvalidText, CloseCode.INVALID_DATA),
    (TwilioProtocolError, CloseCode.POLICY_VIOLATION),
    (DuplicateCall, CloseCode.POLICY_VIOLATION),
    (UnknownCall, CloseCode.POLICY_VIOLATION),
    (ClientProtocolError, CloseCode.POLICY_VIOLATION),
    (Unauthorized, CloseCode.POLICY_VIOLATION),
    (TooManySubscribers, CloseCode.TRY_AGAIN_LATER),
    (DeepgramError, CloseCode.BAD_GATEWAY),
    (BrokerUnavailable, CloseCode.TRY_AGAIN_LATER),
    (NoCallInTime, CloseCode.NORMAL_CLOSURE),
)


# Errors after which RFC 6455 says to *fail* the connection (7.1.7: a close frame, then the
# TCP connection dropped without waiting for the peer's close), not to close it: invalid
# UTF-8 in a text message (8.1). websockets' own parser fails it for the other cases.
FAILING: tuple[type[BaseException], ...] = (InvalidText,)


def fails_connection(exc: BaseException) -> bool:
    """Whether `exc` fails the connection rather than starting a closing handshake."""
    return isinstance(exc, FAILING)


def truncate_reason(reason: str) -> str:
    """Shorten `reason` so that it fits in a close frame."""
    encoded = reason.encode()
    if len(encoded) <= _MAX_REASON_BYTES:
        return reason
    return encoded[: _MAX_REASON_BYTES - 3].decode(errors="ignore") + "..."


def close_frame_for(exc: BaseException) -> tuple[CloseCode, str]:
    """Return the close code and reason that tell a peer why `exc` ended its connection."""
    for kind, code in CLOSE_CODES:
        if isinstance(exc, kind):
            return code, truncate_reason(str(exc))
    return CloseCode.INTERNAL_ERROR, "internal error"
