"""A simulated call's Twilio media, as the bytes its WebSocket client writes: both tracks'
frames of one 20 ms tick in one piece, or each on its own, built from per-call templates.
Pure.

The generator sends a frame per track per call every 20 ms: at 300 calls, 30,000 messages
a second. Rendering each message as text, encoding it and framing it cost about twice what
this does: one bytes formatting per message (its counters), and a `b"".join` of the two
frames (or of each on its own), each a header (`wire.masked_text_header`, zero masking
key), the formatted head, the shared base64 payload and the call's tail. The bytes are
those of `SimulatedCall.media`'s text, framed as websockets frames a client's text message
(with a zero key): the tests parse them back with websockets' own parser.
"""

from __future__ import annotations

import base64
from typing import Final

from ...twilio_events import Track
from ...twilio_simulator import FRAME_BYTES, FRAME_MS, SimulatedCall, pattern
from .measure import PATTERN_PERIOD
from .wire import masked_text_header

__all__ = ["MediaFrames", "media_payloads"]


def media_payloads(track: Track) -> tuple[bytes, ...]:
    """Base64 of every 160-byte frame `pattern` makes on `track`, by offset mod its period."""
    return tuple(
        base64.b64encode(pattern(track, FRAME_BYTES, offset=k)) for k in range(PATTERN_PERIOD)
    )


_INBOUND: Final = media_payloads("inbound")
_OUTBOUND: Final = media_payloads("outbound")


class _Track:
    """One track's `media` message of one call as bytes: `head` % (sequence, chunk,
    timestamp), then the payload, then `tail`."""

    __slots__ = ("head", "rest", "tail")

    def __init__(self, call: SimulatedCall, track: Track) -> None:
        parts = [part.encode() for part in call.media_template(track).parts]
        self.head = b"%d".join(part.replace(b"%", b"%%") for part in parts[:4])
        self.tail = parts[4]
        # The length of what follows the head: a payload (all have one length), the tail.
        self.rest = len(_INBOUND[0]) + len(self.tail)


class MediaFrames:
    """The media frames of `call`, whose audio is `pattern` shifted by `offset` bytes."""

    __slots__ = ("_inbound", "_offset", "_outbound")

    def __init__(self, call: SimulatedCall, offset: int) -> None:
        self._inbound = _Track(call, "inbound")
        self._outbound = _Track(call, "outbound")
        self._offset = offset

    def tick(self, i: int) -> bytes:
        """Frame `i` (from 0) of both tracks, inbound first, framed: what `start` (sequence 1)
        is followed by at the i-th tick, for one write (`bench --arrival together`)."""
        return b"".join(self._parts(i))

    def tracks(self, i: int) -> tuple[bytes, bytes]:
        """Frame `i`'s two messages framed apart, inbound then outbound, for a write each
        (`bench --arrival apart`); `tick(i)` is their join."""
        parts = self._parts(i)
        return b"".join(parts[:4]), b"".join(parts[4:])

    def _parts(self, i: int) -> tuple[bytes, ...]:
        """Frame `i`'s pieces: the inbound message's four (header, head, payload, tail), then
        the outbound's."""
        k = (self._offset + FRAME_BYTES * i) % PATTERN_PERIOD
        chunk, timestamp = i + 1, FRAME_MS * i
        inbound, outbound = self._inbound, self._outbound
        # sequenceNumber: 1 was `start`; then inbound and outbound alternate.
        a = inbound.head % (2 + 2 * i, chunk, timestamp)
        b = outbound.head % (3 + 2 * i, chunk, timestamp)
        return (
            masked_text_header(len(a) + inbound.rest),
            a,
            _INBOUND[k],
            inbound.tail,
            masked_text_header(len(b) + outbound.rest),
            b,
            _OUTBOUND[k],
            outbound.tail,
        )
