"""Real peers for the proxy under test: a running proxy, a Twilio stream, a watching client."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from twilio_dg_proxy.backoff import Backoff
from twilio_dg_proxy.config import Settings
from twilio_dg_proxy.deepgram import Pings
from twilio_dg_proxy.server import ProxyServer, bound_port
from twilio_dg_proxy.twilio_simulator import SimulatedCall
from twilio_dg_proxy.webhook_protocol import Timing

from ..timing import S

# Settings every proxy a test starts gets, under its own (the conftest's `direct_receive`
# fixture puts DIRECT_RECEIVE here).
PROXY_ENV: dict[str, str] = {}

# The core path's tests run with DIRECT_RECEIVE on and off: the direct path, and the recv()
# fallback, must behave the same.
both_receive_modes = pytest.mark.parametrize(
    "direct_receive", ["true", "false"], ids=["direct", "recv"], indirect=True
)


@dataclass
class RunningProxy:
    """A proxy serving on 127.0.0.1 at an ephemeral port."""

    server: ProxyServer
    port: int

    @property
    def twilio_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/twilio"

    @property
    def client_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/client"


class ServerOptions(TypedDict, total=False):
    """`ProxyServer`'s keyword arguments that tests shorten."""

    start_timeout_s: float
    deepgram_pings: Pings
    webhook_timing: Timing
    store_retry: Backoff
    store_flush_timeout_s: float


@asynccontextmanager
async def running_proxy(
    deepgram_url: str, options: ServerOptions | None = None, /, **env: str
) -> AsyncIterator[RunningProxy]:
    """Start a proxy that talks to `deepgram_url`, with settings overridden by `env` (over
    `PROXY_ENV`) and `options` given to `ProxyServer`."""
    settings = Settings.from_env(
        {"DEEPGRAM_URL": deepgram_url, "HOST": "127.0.0.1", "PORT": "0"} | PROXY_ENV | env
    )
    proxy = ProxyServer(settings, **(options or {}))
    async with proxy.running() as server:
        yield RunningProxy(proxy, bound_port(server))


async def until(condition: Callable[[], bool], within: float = 5 * S) -> None:
    """Wait until `condition()` holds, checking every few milliseconds (for state that
    offers nothing to await, such as the hub's counters)."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.005)  # how often to look, not how long: unscaled


class TwilioPeer:
    """Plays Twilio's side of one Media Stream against the proxy."""

    def __init__(self, ws: ClientConnection, call: SimulatedCall) -> None:
        self.ws = ws
        self.call = call

    @classmethod
    @asynccontextmanager
    async def started(cls, proxy: RunningProxy, call: SimulatedCall) -> AsyncIterator[TwilioPeer]:
        """Connect, send `connected` and `start`, and wait until the proxy has opened the call
        (it may already have ended it, if Deepgram failed at once)."""
        hub = proxy.server.hub
        opened = hub.counters.calls
        async with connect(proxy.twilio_url, proxy=None) as ws:
            await ws.send(call.connected())
            await ws.send(call.start())
            await until(lambda: hub.counters.calls > opened)
            yield cls(ws, call)

    async def send_all(
        self, messages: Sequence[tuple[float, str]], *, speed: float | None = None
    ) -> None:
        """Send `(send_time, text)` pairs: `speed` times faster than real time, or at once."""
        loop = asyncio.get_running_loop()
        origin = loop.time()
        for send_time, text in messages:
            if speed is not None:
                await asyncio.sleep(max(0.0, origin + send_time / speed - loop.time()))
            await self.ws.send(text)

    async def stop(self) -> None:
        """Send `stop` and close, as Twilio does at the end of a call."""
        await self.ws.send(self.call.stop())
        await self.ws.close()


class Watcher:
    """A /client subscriber speaking the tutorial's protocol."""

    def __init__(self, ws: ClientConnection, listed: list[str]) -> None:
        self.ws = ws
        self.listed = listed

    @classmethod
    async def join(cls, proxy: RunningProxy, call_sid: str) -> Watcher:
        """Connect, read the call list, choose `call_sid`, and wait until subscribed."""
        hub = proxy.server.hub
        before = hub.counters.subscriptions
        ws = await connect(proxy.client_url, proxy=None)
        listed = json.loads(await ws.recv())
        await ws.send(call_sid + "\n")
        await until(lambda: hub.counters.subscriptions > before or ws.close_code is not None)
        return cls(ws, listed)

    async def transcript(self, within: float = 10 * S) -> list[str]:
        """Every message until the text `close`, which must be followed by a normal close."""
        messages = []
        async with asyncio.timeout(within):
            async for message in self.ws:
                assert isinstance(message, str)
                if message == "close":
                    break
                messages.append(message)
            else:
                raise AssertionError(
                    f"closed without 'close': {self.ws.close_code} {self.ws.close_reason}"
                )
            await self.ws.wait_closed()
        assert self.ws.close_code == 1000, (self.ws.close_code, self.ws.close_reason)
        return messages

    async def closed(self, within: float = 10 * S) -> tuple[int | None, str, list[str]]:
        """Read until the connection closes: (close code, reason, messages received)."""
        messages: list[str] = []
        async with asyncio.timeout(within):
            try:
                async for message in self.ws:
                    messages.append(message if isinstance(message, str) else repr(message))
            except ConnectionClosed:
                pass
        return self.ws.close_code, self.ws.close_reason or "", messages


def results(messages: Sequence[str]) -> list[dict[str, Any]]:
    """The Deepgram `Results` messages among `messages`, decoded."""
    decoded = [json.loads(m) for m in messages]
    return [m for m in decoded if m.get("type") == "Results"]


def stuck_client(port: int, path: str) -> socket.socket:
    """A raw WebSocket client on `path` that completes the upgrade and will never read: its
    tiny receive buffer fills at once, so the server's sends to it block."""
    stuck = socket.create_connection(("127.0.0.1", port))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    stuck.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n".encode()
        + b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        + b"Sec-WebSocket-Version: 13\r\n\r\n"
    )
    return stuck


async def pausing_client(port: int, path: str) -> ClientConnection:
    """A websockets client on `path` that reads only when the test reads: its receive window
    is tiny and websockets buffers one message, so once the test stops reading, the server's
    sends to it block. When the test reads again, it drains what the server sent, in order,
    up to the close frame, whose code and reason it then has (`close_code`, `close_reason`)."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)  # before connecting: the window
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", port))
    return await connect(f"ws://127.0.0.1:{port}{path}", sock=sock, proxy=None, max_queue=1)


async def drained(ws: ClientConnection, within: float = 10.0) -> list[str | bytes]:
    """Read `ws` until its closing handshake is over: every message it still had coming."""
    messages: list[str | bytes] = []
    async with asyncio.timeout(within):
        try:
            async for message in ws:
                messages.append(message)
        except ConnectionClosed:
            pass
    return messages


def send_text(stuck: socket.socket, data: bytes) -> None:
    """Send `data` (under 126 bytes) as one masked text frame (an all-zero mask)."""
    stuck.sendall(bytes([0x81, 0x80 | len(data)]) + b"\x00" * 4 + data)


class ServerProcess:
    """`python -m twilio_dg_proxy` as a subprocess on an ephemeral port; always killed."""

    def __init__(self, process: asyncio.subprocess.Process, port: int, startup: str) -> None:
        self.process = process
        self.port = port
        self.startup = startup  # what it logged up to "listening on"

    @classmethod
    @asynccontextmanager
    async def started(cls, *args: str, **env: str) -> AsyncIterator[ServerProcess]:
        """Start it with `args` (default `--port 0`) and `env` over this environment."""
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "twilio_dg_proxy",
            *(args or ("--port", "0")),
            stderr=asyncio.subprocess.PIPE,
            env=os.environ | env,
        )
        try:
            assert process.stderr is not None
            startup = line = ""
            async with asyncio.timeout(20 * S):
                while "listening on" not in line:  # other loggers (asyncio debug) may come first
                    line = (await process.stderr.readline()).decode()
                    assert line, "the server exited before listening"
                    startup += line
            yield cls(process, int(line.split("ws://127.0.0.1:")[1].split()[0]), startup)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    async def stderr(self) -> str:
        assert self.process.stderr is not None
        return (await self.process.stderr.read()).decode()

    async def log_until(self, text: str, within: float = 10 * S) -> str:
        """Read its log (after `startup`) up to the first line containing `text`; return
        what was read. Fails if it exits first."""
        assert self.process.stderr is not None
        read = line = ""
        async with asyncio.timeout(within):
            while text not in line:
                line = (await self.process.stderr.readline()).decode()
                assert line, f"the server exited before logging {text!r}:\n{read}"
                read += line
        return read
