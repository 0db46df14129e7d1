"""Ping floods against the proxy, in a process of their own (issue 11's attacker).

The child, ``python -m twilio_dg_proxy.commands.bench.flood --port P --connections N
--duration S``, prints ``{"ready": true}``, waits for a ``go`` line on stdin, then for S
seconds keeps N raw sockets flooding: each upgrades on /client with a valid WebSocket
handshake, then writes masked empty pings as fast as the socket takes them, reading (and
discarding) what comes back; when the proxy closes or drops it, it connects again at once,
as a persistent attacker would. It then resets every socket (so nothing it queued reaches
the proxy after the window) and prints one JSON line, a `FloodResult`. It runs at a lower
priority (niceness +10) than the load it shares its CPUs with: the load generator and the
fake Deepgram must keep time for the figures to be the proxy's.

Pure: `upgrade_request`, `accept_key`, `upgrade_status`, `ServerFrames` and `FloodResult`.
`FloodProcess` is the parent's side.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import errno
import hashlib
import json
import os
import re
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Final

__all__ = [
    "PING",
    "FloodProcess",
    "FloodResult",
    "ServerFrames",
    "accept_key",
    "main",
    "upgrade_request",
    "upgrade_status",
]

#: An empty ping, masked (a client must mask) with an all-zero key: six bytes.
PING: Final = b"\x89\x80\x00\x00\x00\x00"
# One write's worth: as much as a loopback socket usually takes at once.
_PINGS: Final = PING * ((64 << 10) // len(PING))
_GUID: Final = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A server's pong to an empty ping: FIN + pong, unmasked, empty. Runs of them are skipped in C.
_PONG_RUN: Final = re.compile(rb"(?:\x8a\x00)*")
_CLOSE: Final = 0x8
_NO_STATUS: Final = 1005  # a close frame without a code (RFC 6455 7.4.1)
# After a refused upgrade or a failed connect, wait this long before the next attempt, so
# that a proxy at its limits is not met with a busy loop of ours.
_RETRY_S: Final = 0.01
_NICENESS: Final = 10


def accept_key(key: str) -> str:
    """The Sec-WebSocket-Accept a server must answer to `key` (RFC 6455 4.2.2)."""
    return base64.b64encode(hashlib.sha1((key + _GUID).encode()).digest()).decode()


def upgrade_request(port: int, path: str, key: str) -> bytes:
    """A valid WebSocket opening handshake for ``ws://127.0.0.1:port{path}``."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def upgrade_status(head: bytes, key: str) -> int:
    """The status of a response `head` (up to its blank line): 101 only when it also
    accepts `key`, else the status it gave (0 when unreadable)."""
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        return 0
    status = int(parts[1])
    if status != 101:
        return status
    headers = {
        name.strip().lower(): value.strip()
        for name, sep, value in (line.partition(":") for line in lines[1:])
        if sep
    }
    return 101 if headers.get("sec-websocket-accept") == accept_key(key) else 0


class ServerFrames:
    """Reads the frames a server sends, keeping only what a flooder needs: how many pongs
    came back and the code of the close frame, if one came. Bytes in, no I/O."""

    def __init__(self) -> None:
        self.pongs = 0
        self.close_code: int | None = None  # set once a close frame has arrived
        self._buffer = b""

    def feed(self, data: bytes) -> None:
        """Take the next bytes the server sent (nothing after a close frame counts)."""
        if self.close_code is not None:
            return
        buffer = self._buffer + data if self._buffer else data
        position, size = 0, len(buffer)
        while position < size:
            run = _PONG_RUN.match(buffer, position)
            assert run is not None  # the pattern matches the empty string
            self.pongs += (run.end() - position) // 2
            position = run.end()
            if size - position < 2:
                break
            first, second = buffer[position], buffer[position + 1]
            length, header = second & 0x7F, 2
            if length == 126:
                if size - position < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, position + 2)
                header = 4
            elif length == 127:
                if size - position < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, position + 2)
                header = 10
            if second & 0x80:
                header += 4  # servers do not mask; skip the key if one did
            end = position + header + length
            if end > size:
                break
            if first & 0x0F == _CLOSE:
                payload = buffer[end - length : end]
                self.close_code = struct.unpack("!H", payload[:2])[0] if length >= 2 else _NO_STATUS
                self._buffer = b""
                return
            if first & 0x0F == 0xA:
                self.pongs += 1
            position = end
        self._buffer = buffer[position:]


@dataclass(slots=True)
class FloodResult:
    """What the flooders did: connections are accepted upgrades; `closes` counts the close
    frames the proxy sent them, by code; `drops` the connections it ended without one."""

    flooders: int
    seconds: float = 0.0
    pings_sent: int = 0  # written to the sockets (the kernel took them)
    pongs_received: int = 0
    connections: int = 0
    refused: int = 0  # upgrades answered with anything but a valid 101
    connect_errors: int = 0
    closes: dict[int, int] = field(default_factory=dict)
    drops: int = 0

    @property
    def closed_by_proxy(self) -> int:
        """Flooding connections the proxy ended, with a close frame or without."""
        return sum(self.closes.values()) + self.drops

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (close codes become strings)."""
        data = asdict(self)
        data["closes"] = {str(code): n for code, n in sorted(self.closes.items())}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FloodResult:
        """The result from `to_json`'s form."""
        closes = {int(code): int(n) for code, n in data.get("closes", {}).items()}
        return cls(**{**data, "closes": closes})


class _Flooder:
    """One attacking connection at a time, on one slot; reopened when it ends."""

    __slots__ = ("frames", "head", "key", "requested", "sent", "sock", "upgraded")

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.key = ""
        self.requested = False  # the upgrade request is sent (the TCP connect is over)
        self.head = b""
        self.upgraded = False
        self.frames = ServerFrames()
        self.sent = 0  # bytes of pings written on this connection


class _Flood:
    """N flooders on one selector, until a deadline."""

    def __init__(self, port: int, flooders: int, path: str) -> None:
        self.port = port
        self.path = path
        self.selector = selectors.DefaultSelector()
        self.slots = [_Flooder() for _ in range(flooders)]
        self.result = FloodResult(flooders=flooders)
        self.closes: Counter[int] = Counter()
        self.retry_at: dict[int, float] = {}

    def run(self, duration_s: float) -> FloodResult:
        began = time.monotonic()
        deadline = began + duration_s
        for index in range(len(self.slots)):
            self._open(index)
        while (now := time.monotonic()) < deadline:
            for index, when in list(self.retry_at.items()):
                if when <= now:
                    del self.retry_at[index]
                    self._open(index)
            for key, events in self.selector.select(timeout=min(0.05, deadline - now)):
                self._ready(key.data, events)
        for index in range(len(self.slots)):
            self._end(index)
        self.selector.close()
        self.result.seconds = time.monotonic() - began
        self.result.closes = dict(self.closes)
        return self.result

    def _open(self, index: int) -> None:
        flooder = self.slots[index] = _Flooder()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        # Reset on close: what is still queued must not reach the proxy after the window.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        flooder.sock = sock
        flooder.key = base64.b64encode(os.urandom(16)).decode()
        code = sock.connect_ex(("127.0.0.1", self.port))
        if code not in (0, errno.EINPROGRESS):
            self._failed(index)
            return
        self.selector.register(sock, selectors.EVENT_WRITE, index)

    def _failed(self, index: int) -> None:
        self.result.connect_errors += 1
        self._end(index)
        self.retry_at[index] = time.monotonic() + _RETRY_S

    def _end(self, index: int) -> None:
        flooder = self.slots[index]
        if flooder.sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(flooder.sock)
            flooder.sock.close()
            flooder.sock = None
        self.result.pings_sent += flooder.sent // len(PING)
        flooder.sent = 0
        self.result.pongs_received += flooder.frames.pongs
        flooder.frames.pongs = 0

    def _ready(self, index: int, events: int) -> None:
        flooder = self.slots[index]
        sock = flooder.sock
        assert sock is not None
        try:
            if not flooder.requested:  # registered for writing until connected
                if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._failed(index)
                    return
                sock.send(upgrade_request(self.port, self.path, flooder.key))
                flooder.requested = True
                self.selector.modify(sock, selectors.EVENT_READ, index)
                return
            if events & selectors.EVENT_READ:
                data = sock.recv(1 << 18)
                if not data:
                    self._ended(index)
                    return
                if not flooder.upgraded:
                    self._answer(index, data)
                else:
                    flooder.frames.feed(data)
                    if flooder.frames.close_code is not None:
                        self._ended(index)
                        return
            if events & selectors.EVENT_WRITE and flooder.upgraded:
                phase = flooder.sent % len(PING)  # finish a ping cut short first
                flooder.sent += sock.send(memoryview(_PINGS)[phase:])
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # reset by the proxy
            self._ended(index)

    def _answer(self, index: int, data: bytes) -> None:
        flooder = self.slots[index]
        flooder.head += data
        head, blank, rest = flooder.head.partition(b"\r\n\r\n")
        if not blank:
            if len(flooder.head) > 16 << 10:
                self._refused(index)
            return
        if upgrade_status(head, flooder.key) != 101:
            self._refused(index)
            return
        flooder.upgraded = True
        self.result.connections += 1
        flooder.frames.feed(rest)
        assert flooder.sock is not None
        self.selector.modify(flooder.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, index)

    def _refused(self, index: int) -> None:
        self.result.refused += 1
        self._end(index)
        self.retry_at[index] = time.monotonic() + _RETRY_S

    def _ended(self, index: int) -> None:
        """The proxy closed (or reset) this connection: count how, and attack again."""
        flooder = self.slots[index]
        if flooder.upgraded:
            if flooder.frames.close_code is not None:
                self.closes[flooder.frames.close_code] += 1
            else:
                self.result.drops += 1
            self._end(index)
            self._open(index)
        else:
            self._refused(index)


def main() -> None:
    """Entry point of the child process."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True)
    parser.add_argument("--path", default="/client")
    args = parser.parse_args()
    with contextlib.suppress(OSError):
        os.nice(_NICENESS)
    _reply({"ready": True})
    if sys.stdin.readline().strip() != "go":
        return  # the parent gave up before the window
    result = _Flood(args.port, args.connections, args.path).run(args.duration)
    _reply(result.to_json())


def _reply(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


class FloodProcess:
    """The parent's handle on the flood child process."""

    def __init__(self, process: asyncio.subprocess.Process, duration_s: float) -> None:
        self.process = process
        self.duration_s = duration_s

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    @asynccontextmanager
    async def started(
        cls, port: int, connections: int, duration_s: float
    ) -> AsyncIterator[FloodProcess]:
        """Start the child (it inherits this process's CPU affinity), ready to flood the
        proxy on `port` for `duration_s` once told to `go`; end it on exit."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "twilio_dg_proxy.commands.bench.flood",
            "--port",
            str(port),
            "--connections",
            str(connections),
            "--duration",
            str(duration_s),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            async with asyncio.timeout(20):
                hello = json.loads(await process.stdout.readline())
            if not hello.get("ready"):
                raise ConnectionError(f"the flood process said {hello!r}")
            yield cls(process, duration_s)
        finally:
            if process.stdin is not None:
                process.stdin.close()
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    def go(self, _: object = None) -> None:
        """Start flooding (also as a future's done callback)."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"go\n")

    async def result(self) -> FloodResult:
        """What the floods did, once they are over (within their duration and 15 s)."""
        assert self.process.stdout is not None
        async with asyncio.timeout(self.duration_s + 15):
            line = await self.process.stdout.readline()
        if not line:
            raise ConnectionError("the flood process exited without a result")
        return FloodResult.from_json(json.loads(line))


if __name__ == "__main__":
    main()
