"""A WebSocket peer written byte by byte, for what no well-behaved client does: frames sent
before the 101, pings by the thousand, a close never answered, a socket never read."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from ..timing import S

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
PING, PONG, CLOSE, TEXT = 0x9, 0xA, 0x8, 0x1


def upgrade_request(path: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def frame_header(opcode: int, length: int) -> bytes:
    """The header of a masked, final frame of `length` bytes, with an all-zero mask (so the
    payload goes as it is)."""
    if length < 126:
        head = bytes([0x80 | opcode, 0x80 | length])
    elif length < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + struct.pack("!H", length)
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + struct.pack("!Q", length)
    return head + b"\x00" * 4


def frame(opcode: int, payload: bytes) -> bytes:
    return frame_header(opcode, len(payload)) + payload


class RawPeer:
    """One TCP connection to the proxy; reads and writes exactly what it is told to."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    @asynccontextmanager
    async def connected(cls, port: int, *, rcvbuf: int | None = None) -> AsyncIterator[RawPeer]:
        """Connect to 127.0.0.1:`port` (with a receive buffer of `rcvbuf` bytes if given:
        a small one fills at once when the peer does not read); always aborted at the end."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(sock=sock)
        try:
            yield cls(reader, writer)
        finally:
            writer.transport.abort()

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def status(self, within: float = 5 * S) -> int:
        """The status code of the server's answer to the upgrade (its head read)."""
        async with asyncio.timeout(within):
            head = await self.reader.readuntil(b"\r\n\r\n")
        return int(head.split(b" ", 2)[1])

    async def frame(self) -> tuple[int, bytes]:
        """(opcode, payload) of the server's next frame (servers do not mask)."""
        first, second = await self.reader.readexactly(2)
        length = second & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", await self.reader.readexactly(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", await self.reader.readexactly(8))
        return first & 0x0F, await self.reader.readexactly(length)

    async def close_frame(self, within: float = 5 * S) -> tuple[int, str]:
        """(code, reason) of the server's close frame, skipping the frames before it."""
        async with asyncio.timeout(within):
            while True:
                opcode, payload = await self.frame()
                if opcode == CLOSE:
                    (code,) = struct.unpack("!H", payload[:2])
                    return code, payload[2:].decode()

    async def frames_until_close(
        self, within: float = 5 * S
    ) -> tuple[dict[int, int], tuple[int, str]]:
        """How many frames of each opcode the server sent before its close frame, and that
        frame's (code, reason)."""
        counts: dict[int, int] = {}
        async with asyncio.timeout(within):
            while True:
                opcode, payload = await self.frame()
                if opcode == CLOSE:
                    (code,) = struct.unpack("!H", payload[:2])
                    return counts, (code, payload[2:].decode())
                counts[opcode] = counts.get(opcode, 0) + 1

    async def end_of_stream(self, within: float) -> bytes:
        """Read until the server closes its side of TCP; what came before it. Raises
        TimeoutError if that takes longer than `within`."""
        async with asyncio.timeout(within):
            return await self.reader.read()
