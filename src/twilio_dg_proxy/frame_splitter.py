"""Split a WebSocket server's incoming bytes into the messages it may take itself and the
frames it must leave to websockets. Pure: bytes in, pieces out.

Twilio sends a call's audio as ~100 small text messages per second, each in one masked
frame. websockets parses every frame through a chain of generators, which cost more CPU
than everything else done with the message (`bench --profile`). A `FrameSplitter` reads
just those frames itself: complete, unfragmented (FIN) TEXT or BINARY frames with no
reserved bits, masked as the side requires (a server reads masked frames, a client
unmasked ones), within `max_size`, outside a fragmented message. Everything else
(control frames, fragments, oversized or malformed frames) goes to websockets whole and in
order, so its checks, limits, pings and closing handshake stay as they are. The splitter
follows frame boundaries through everything it passes on, so it is never out of step.
"""

from __future__ import annotations

from dataclasses import dataclass

from .budget import TokenBucket

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets builds its C speedups wherever it can
    from websockets.utils import apply_mask

__all__ = ["ControlGate", "FrameSplitter", "Message", "Passed"]

_FIN_TEXT = 0x81  # FIN, no reserved bits, opcode 1
_FIN_BINARY = 0x82  # FIN, no reserved bits, opcode 2
_MASKED = 0x80
_OPCODE = 0x0F
_FIN = 0x80
_TEXT, _BINARY, _CONT = 0x1, 0x2, 0x0
_PING, _PONG = 0x9, 0xA
_LONGEST_HEADER = 14  # 2 bytes, an 8-byte length, a 4-byte mask


# Not frozen, for the same reason as twilio_events.Media: one per message.
@dataclass(slots=True)
class Message:
    """A whole message read from one frame (its payload unmasked)."""

    data: bytes
    text: bool


@dataclass(slots=True)
class Passed:
    """Bytes for websockets to parse, in order, starting where the previous piece ended."""

    data: bytes


class FrameSplitter:
    """Feed it every byte received after the handshake request; it returns, in stream order,
    the messages it read and the bytes it passed on. `max_size` may change between feeds."""

    def __init__(self, max_size: int, *, masked: bool = True) -> None:
        self.max_size = max_size
        self.masked = masked  # a server reads masked frames, a client unmasked ones
        # The start of a frame not complete yet (to take, or to judge): grown in place, so a
        # big frame arriving in many small reads costs no quadratic copying.
        self._pending = bytearray()
        self._owed = 0  # bytes still to come of a frame being passed on
        self._fragmented = False  # inside a fragmented message: websockets assembles it

    def feed(self, data: bytes) -> list[Message | Passed]:
        """The pieces that `data` completes, in order."""
        pieces: list[Message | Passed] = []
        if self._owed:
            passed = data[: self._owed]
            self._owed -= len(passed)
            pieces.append(Passed(passed))
            data = data[len(passed) :]
        buffer: bytes | bytearray = data
        if self._pending:
            self._pending += data
            buffer = self._pending
        self._split(buffer, pieces)
        return pieces

    def _split(self, data: bytes | bytearray, pieces: list[Message | Passed]) -> None:
        """Append to `pieces` what the frames in `data` make; keep the rest pending."""
        start = 0  # of the bytes not yet handed out
        pos = 0  # of the next frame
        end = len(data)
        masked = self.masked
        while pos < end:
            head = _header(data, pos)
            if head is None:  # incomplete header: wait for more
                break
            payload_at, length, first = head
            frame_end = payload_at + length
            if self._is_simple(first, data[pos + 1], length):
                if frame_end > end:  # wait for the rest of it
                    break
                if pos > start:
                    pieces.append(Passed(bytes(data[start:pos])))
                if masked:  # apply_mask takes any buffer and returns bytes
                    payload = apply_mask(
                        data[payload_at:frame_end], data[payload_at - 4 : payload_at]
                    )
                else:
                    payload = bytes(data[payload_at:frame_end])
                pieces.append(Message(payload, first == _FIN_TEXT))
                start = pos = frame_end
                continue
            self._follow(first)
            if frame_end > end:  # pass what there is; the rest is owed
                self._owed = frame_end - end
                pos = end
                break
            pos = frame_end
        if pos > start:
            pieces.append(Passed(bytes(data[start:pos])))
        if pos == end:  # whole frames, the usual read: no new buffer unless one was pending
            if self._pending:
                self._pending = bytearray()
        elif pos or not isinstance(data, bytearray):  # else all of it is pending, where it is
            self._pending = bytearray(data[pos:])

    def release(self) -> bytes:
        """The bytes held back (the start of a frame, not yet passed on), for a caller that
        stops splitting and hands the rest of the stream to websockets."""
        held, self._pending = bytes(self._pending), bytearray()
        return held

    def _is_simple(self, first: int, second: int, length: int) -> bool:
        return (
            (first == _FIN_TEXT or first == _FIN_BINARY)
            and (second & _MASKED != 0) == self.masked
            and length <= self.max_size
            and not self._fragmented
        )

    def _follow(self, first: int) -> None:
        """Track fragmented messages through a frame passed on (control frames may come in
        the middle of one)."""
        opcode = first & _OPCODE
        if opcode in (_TEXT, _BINARY):
            self._fragmented = not first & _FIN
        elif opcode == _CONT and first & _FIN:
            self._fragmented = False


class ControlGate:
    """Follows the frames of a stream, fed in order from its first byte, and says how much
    of each read may be parsed: all of it, or the bytes before the first ping or pong frame
    that a `TokenBucket` refuses. A frame is judged by its first byte, so a refused frame
    always starts in the read that refuses it. Once it has refused, feed it nothing more."""

    __slots__ = ("_head", "_skip")

    def __init__(self) -> None:
        self._head = b""  # the start of a header not complete yet (its frame already judged)
        self._skip = 0  # bytes still to come of the current frame

    def passable(self, data: bytes, budget: TokenBucket, now: float) -> int:
        """How many bytes of `data` may be parsed: `len(data)`, or the offset of the first
        control frame for which `budget.take(now)` fails."""
        end = len(data)
        pos = self._skip
        self._skip = 0
        if self._head:
            # A header is at most 14 bytes: with that many, it is complete.
            head = self._head + data[:_LONGEST_HEADER]
            parsed = _header(head, 0)
            if parsed is None:
                self._head = head
                return end
            pos = parsed[0] + parsed[1] - len(self._head)
            self._head = b""
        while pos < end:
            if data[pos] & _OPCODE in (_PING, _PONG) and not budget.take(now):
                return pos
            parsed = _header(data, pos)
            if parsed is None:
                self._head = data[pos:]
                return end
            pos = parsed[0] + parsed[1]
        self._skip = pos - end
        return end


def _header(data: bytes | bytearray, pos: int) -> tuple[int, int, int] | None:
    """(payload offset, payload length, first byte) of the frame at `pos`, or None if its
    header is not complete in `data`."""
    end = len(data)
    if end - pos < 2:
        return None
    first, second = data[pos], data[pos + 1]
    length = second & 0x7F
    at = pos + 2
    if length == 126:
        if end - at < 2:
            return None
        length = int.from_bytes(data[at : at + 2], "big")
        at += 2
    elif length == 127:
        if end - at < 8:
            return None
        length = int.from_bytes(data[at : at + 8], "big")
        at += 8
    if second & _MASKED:
        at += 4
        if at > end:
            return None
    return at, length, first
