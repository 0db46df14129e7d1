"""What the calls and watchers report as they go, for metrics and readiness: the `Observer`
interface, which ignores everything, and the pure rules that name what is reported (how a
call ended, why a Deepgram stream failed, which refusals are bad input).

No sockets, no clock, no metrics library: the I/O layer passes times in, and `metrics.py`
(Prometheus) and `readiness.py` (/readyz) subclass `Observer`. Two methods run per message
(`audio_sent`, per chunk to Deepgram; `result_delivered`, per message to a watcher): an
implementation may do one histogram observation and one integer addition there, no more.
"""

from __future__ import annotations

from typing import Final, Literal

from .exceptions import (
    ClientProtocolError,
    DeepgramError,
    DeepgramNotConfigured,
    DeepgramRefused,
    DeepgramUnavailable,
    TwilioProtocolError,
    UnknownCall,
)

CallEnd = Literal["normal", "bad_input", "deepgram_failed", "error"]
"""How a call ended: Twilio's `stop` or its connection closing (normal), a malformed or
unexpected message from Twilio (bad_input), Deepgram refusing or a reconnect budget spent
(deepgram_failed), a bug (error)."""

CALL_ENDS: Final[tuple[CallEnd, ...]] = ("normal", "bad_input", "deepgram_failed", "error")

DeepgramFailure = Literal[
    "closed", "unreachable", "refused_auth", "refused_limit", "refused_server", "refused_other"
]
"""Why a Deepgram stream failed: closed mid-call (1011, a dropped connection, pings
unanswered), not reached (network, timeout), refused at the upgrade with 401/402/403 (the
key, the credit, the model), 429 (concurrency), 5xx, or another status (400: the query)."""

DEEPGRAM_FAILURES: Final[tuple[DeepgramFailure, ...]] = (
    "closed",
    "unreachable",
    "refused_auth",
    "refused_limit",
    "refused_server",
    "refused_other",
)

# Failures that say Deepgram (or the engine) cannot serve any call from here: readiness
# drops until a stream opens again or the start-up check passes again. A 429 or a 400 is
# about one stream (the account's concurrency, the query), a close mid-call about one link.
UNREACHABLE_FAILURES: Final[frozenset[DeepgramFailure]] = frozenset(
    {"unreachable", "refused_auth", "refused_server"}
)

# What a peer sent that ends its connection: counted as refusals for bad input (Twilio's
# malformed or out-of-order messages, binary frames and bad UTF-8 among them; a /client
# choice that is not text or not an active call).
BAD_INPUT_ERRORS: Final[tuple[type[Exception], ...]] = (
    TwilioProtocolError,
    ClientProtocolError,
    UnknownCall,
)


def deepgram_failure(exc: DeepgramError) -> DeepgramFailure:
    """Name why a Deepgram stream failed (see `DeepgramFailure`)."""
    if isinstance(exc, DeepgramRefused):
        if exc.status in (401, 402, 403):
            return "refused_auth"
        if exc.status == 429:
            return "refused_limit"
        return "refused_server" if exc.status >= 500 else "refused_other"
    if isinstance(exc, DeepgramUnavailable | DeepgramNotConfigured):
        return "unreachable"
    return "closed"  # DeepgramClosed: a drop, 1011, unanswered pings


def is_bad_input(exc: BaseException) -> bool:
    """Whether `exc` is a peer's malformed or unexpected input (not a limit, not auth)."""
    return isinstance(exc, BAD_INPUT_ERRORS)


class Observer:
    """Receives what the proxy observes; this base ignores it all (metrics off)."""

    def audio_sent(self, size: int, waited_s: float | None) -> None:
        """A chunk of `size` bytes went to Deepgram, `waited_s` after the first Twilio frame
        in it arrived (None: not timed). Hot path: one per chunk (10 per call-second at
        CHUNK_MS=100)."""

    def result_delivered(self, waited_s: float) -> None:
        """A Deepgram message was written to one watcher, `waited_s` after it arrived from
        Deepgram (hot path: per result per watcher)."""

    def deepgram_opened(self, open_s: float) -> None:
        """A Deepgram stream was accepted, `open_s` after it was asked for."""

    def deepgram_failed(self, failure: DeepgramFailure) -> None:
        """A Deepgram stream could not open, or closed before it was asked to."""

    def deepgram_reconnected(self, failure: DeepgramFailure) -> None:
        """A call's stream was reopened after `failure`."""

    def call_ended(self, how: CallEnd) -> None:
        """A call streamed by this process ended."""

    def refused_bad_input(self) -> None:
        """A connection was closed for malformed or unexpected input."""


NO_OBSERVER: Final = Observer()
