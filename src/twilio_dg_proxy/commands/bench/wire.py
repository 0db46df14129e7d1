"""A lean WebSocket client for load generation, on websockets' Sans-I/O protocol.

websockets' asyncio client spends a lock, a future and a task hop on every message; a
generator sending 100 frames a second for each of a thousand calls cannot afford that, or it
becomes the bottleneck it is meant to measure. `WireClient` drives the same protocol object
(`websockets.client.ClientProtocol`: handshake, framing, masking, closing) straight from an
`asyncio.Protocol`: frames out with one `transport.write`, frames in through one callback.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from typing import Final, cast

from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.protocol import Protocol, State
from websockets.uri import parse_uri

__all__ = ["OnText", "WireClient", "flush", "masked_text_header", "text_frame"]

#: Called with each text message's UTF-8 bytes and the time.monotonic() of its arrival.
OnText = Callable[[bytes, float], None]

# After our close frame, how long the server gets to finish the closing handshake.
_CLOSE_TIMEOUT_S = 10.0


def masked_text_header(size: int) -> bytes:
    """The header of a client-to-server text frame of `size` bytes (FIN, text, masked), its
    masking key included: all zero.

    RFC 6455 wants an unpredictable key, to keep crafted payloads from poisoning the caches
    of HTTP proxies on the way; the load goes to 127.0.0.1 through no proxy, and a zero key
    makes masking the identity, so building a frame is a header and the payload as it is,
    instead of a random draw and an XOR pass. The proxy unmasks it as any other frame.
    """
    if size < 126:
        return _SHORT_HEADER.pack(0x81, 0x80 | size)
    if size < 1 << 16:
        return _MEDIUM_HEADER.pack(0x81, 0x80 | 126, size)
    return _LONG_HEADER.pack(0x81, 0x80 | 127, size)


# FIN + text; MASK + length (7 bits, or 126 + 16 bits, or 127 + 64 bits); a zero key.
_SHORT_HEADER: Final = struct.Struct("!BB4x")
_MEDIUM_HEADER: Final = struct.Struct("!BBH4x")
_LONG_HEADER: Final = struct.Struct("!BBQ4x")


def text_frame(data: bytes) -> bytes:
    """One client-to-server text frame carrying `data` (UTF-8), masked with an all-zero key
    (`masked_text_header`)."""
    return masked_text_header(len(data)) + data


def flush(protocol: Protocol, transport: asyncio.Transport | None) -> None:
    """Write what `protocol` has to send in one write (one send(2)); an empty chunk, its
    signal to half-close, as an end of file. Dropped when there is nowhere to write."""
    chunks = protocol.data_to_send()
    if not chunks or transport is None or transport.is_closing():
        return
    if all(chunks):
        transport.write(b"".join(chunks))
        return
    for data in chunks:
        if data:
            transport.write(data)
        elif transport.can_write_eof():
            transport.write_eof()


def _ignore(data: bytes, received_at: float) -> None:
    """Drop a message (Twilio's side hears nothing but the close)."""


class WireClient(asyncio.Protocol):
    """One client connection. Open with `connect`; `closed` resolves when the TCP connection
    is gone, whoever ended it."""

    def __init__(self, uri: str, on_text: OnText = _ignore) -> None:
        self.protocol = ClientProtocol(parse_uri(uri), max_size=None)
        self.on_text = on_text
        loop = asyncio.get_running_loop()
        self.opened: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._transport: asyncio.Transport | None = None
        self._fragments: list[bytes] = []
        self._close_timer: asyncio.TimerHandle | None = None

    @classmethod
    async def connect(
        cls,
        uri: str,
        on_text: OnText = _ignore,
        timeout: float = 10.0,  # noqa: ASYNC109 (asyncio.timeout applies it inside)
    ) -> WireClient:
        """Open a connection to `uri` (ws:// only) and complete the opening handshake."""
        client = cls(uri, on_text)
        target = parse_uri(uri)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            await loop.create_connection(lambda: client, target.host, target.port)
            await client.opened
        return client

    @property
    def is_open(self) -> bool:
        """Whether messages can still be sent."""
        return self.protocol.state is State.OPEN

    @property
    def close_code(self) -> int | None:
        """The code of the close frame the server sent, if any."""
        received = self.protocol.close_rcvd
        return received.code if received is not None else None

    def send_texts(self, *texts: bytes) -> None:
        """Send each of `texts` (UTF-8) as one text message, all in one write."""
        for text in texts:
            self.protocol.send_text(text)
        self._flush()

    def send_frames(self, frames: bytes) -> None:
        """Send frames already built (`text_frame`, `media_frames`), in one write (open
        connections only).

        The protocol object does not track data frames it did not build, so this is safe
        while no fragmented message is in progress, which `send_texts` never leaves.
        """
        if self._transport is not None:
            self._transport.write(frames)

    def close(self, code: int = 1000) -> None:
        """Start the closing handshake; `closed` resolves when it is over."""
        if self.protocol.state is State.OPEN:
            self.protocol.send_close(code)
            self._flush()
            self._expect_close()

    def abort(self) -> None:
        """Drop the TCP connection at once."""
        if self._transport is not None:
            self._transport.abort()

    # asyncio.Protocol callbacks.

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport (uvloop's are not asyncio.Transport subclasses, hence the cast).
        self._transport = cast(asyncio.Transport, transport)
        self.protocol.send_request(self.protocol.connect())
        self._flush()

    def data_received(self, data: bytes) -> None:
        received_at = time.monotonic()  # one stamp for every message of this read
        self.protocol.receive_data(data)
        events = self.protocol.events_received()
        self._flush()  # pongs and the answer to a close frame
        for event in events:
            if isinstance(event, Frame):
                self._frame(event, received_at)
            elif isinstance(event, Response) and not self.opened.done():
                if self.protocol.handshake_exc is not None:
                    self.opened.set_exception(self.protocol.handshake_exc)
                else:
                    self.opened.set_result(None)
        if self.protocol.close_expected():
            self._expect_close()

    def eof_received(self) -> bool | None:
        self.protocol.receive_eof()
        self.protocol.events_received()
        self._flush()
        return None  # let asyncio close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.opened.done():
            self.opened.set_exception(exc or ConnectionError("closed during the handshake"))
        if not self.closed.done():
            self.closed.set_result(None)

    # Internals.

    def _frame(self, frame: Frame, received_at: float) -> None:
        if frame.opcode is not Opcode.TEXT and not (
            frame.opcode is Opcode.CONT and self._fragments
        ):
            return  # control frames are handled by the protocol; binary is not expected
        data = bytes(frame.data)  # the parser gives bytes already: no copy
        if frame.fin and not self._fragments:
            self.on_text(data, received_at)
        elif frame.fin:
            self._fragments.append(data)
            message, self._fragments = b"".join(self._fragments), []
            self.on_text(message, received_at)
        else:
            self._fragments.append(data)

    def _flush(self) -> None:
        flush(self.protocol, self._transport)

    def _expect_close(self) -> None:
        if self._close_timer is None and self._transport is not None:
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(_CLOSE_TIMEOUT_S, self._transport.abort)
