"""A real HTTP server receiving webhooks on 127.0.0.1, for the webhook tests: it verifies
each request's signature with `webhook_protocol.verify`, records it, and answers as told
(a script of replies, then a default): any status with headers, or never (hang). Also a
closed port (`refusing_url`), where connections are refused.

HTTP/1.1 with keep-alive, requests with a Content-Length body (what httpx sends), written
on asyncio streams so that a test awaits it in its own loop."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any

from twilio_dg_proxy.exceptions import InvalidWebhook
from twilio_dg_proxy.webhook_protocol import verify


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request: `status` with `headers`, or never (`hang`)."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    hang: bool = False


OK = Reply()
HANG = Reply(hang=True)


@dataclass(frozen=True)
class Received:
    """One request as received: its headers (lowercase names), body, and whether its
    signature verified (else `problem` says why), and the reply it was given."""

    headers: dict[str, str]
    body: bytes
    problem: str
    reply: Reply

    @property
    def verified(self) -> bool:
        return not self.problem

    @property
    def event(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


class WebhookReceiver:
    """The server, as an async context manager; `url` once started."""

    def __init__(self, secret: str, replies: Iterable[Reply] = (), default: Reply = OK) -> None:
        self.secret = secret
        self.script = deque(replies)
        self.default = default
        self.received: list[Received] = []
        self._server: asyncio.Server | None = None
        self._stopping = asyncio.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self.path = "/hook"
        self.port = 0  # once started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self.path}"

    async def __aenter__(self) -> WebhookReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._stopping.set()  # releases the hanging requests
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    # What the tests read.

    def delivered(self) -> list[Received]:
        """The requests answered with a 2xx, in order."""
        return [r for r in self.received if 200 <= r.reply.status <= 299 and not r.reply.hang]

    def events(self) -> list[dict[str, Any]]:
        """The events delivered (answered 2xx), in order."""
        return [r.event for r in self.delivered()]

    def types(self) -> list[str]:
        return [event["type"] for event in self.events()]

    # Serving.

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # the client went away
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Read, record and answer one request; False when the connection should end."""
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        reply = self.script.popleft() if self.script else self.default
        self.received.append(Received(headers, body, self._check(headers, body), reply))
        if reply.hang:
            await self._stopping.wait()
            return False
        phrase = HTTPStatus(reply.status).phrase
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        writer.write(
            f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Length: 0\r\n{extra}\r\n".encode()
        )
        await writer.drain()
        return True

    def _check(self, headers: dict[str, str], body: bytes) -> str:
        try:
            verify(self.secret, headers, body, now=time.time())
        except InvalidWebhook as exc:
            return str(exc)
        return ""


@contextmanager
def refusing_url() -> Iterator[str]:
    """An http:// URL on 127.0.0.1 whose port refuses connections: bound (so no one else
    takes it meanwhile) but not listening."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()
