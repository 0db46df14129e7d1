"""What the project's local Deepgram-protocol servers (the offline engine and the synthetic
engine) share: a websockets server on a host and port, its URL, the upgrade's checks and
answers, the idle-deadline watch of a stream, and stopping it.

The rules themselves (what is refused, with which body and headers; when a stream is idle)
are in `deepgram_server_protocol`; this module applies them with websockets and the clock.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .deepgram_server_protocol import (
    AUTH_TOKEN_PATH,
    LISTEN_PATH,
    REQUEST_ID_HEADER,
    Refusal,
    check_key,
    refusal_body,
    refusal_headers,
    token_details_body,
)
from .http_responses import set_header

__all__ = ["Listening", "bound_port", "respond_refused", "watch_deadline"]


def bound_port(server: Server) -> int:
    """The TCP port `server` listens on (useful with port 0)."""
    return int(server.sockets[0].getsockname()[1])


def respond_refused(connection: ServerConnection, refusal: Refusal) -> Response:
    """Return Deepgram's answer to a refused upgrade: `refusal.status`, its JSON body and
    headers, under a fresh request id."""
    request_id = str(uuid.uuid4())
    response = connection.respond(refusal.status, refusal_body(refusal, request_id=request_id))
    for name, value in refusal_headers(refusal, request_id=request_id).items():
        set_header(response, name, value)  # replaces websockets' text/plain Content-Type
    return response


async def watch_deadline(
    receiver: asyncio.Task[None],
    deadline: Callable[[], tuple[float, str] | None],
    close: Callable[[str], Awaitable[None]],
) -> None:
    """Return when `receiver` ends, awaiting ``close(reason)`` if a deadline passes first.

    `deadline()` gives the time (on `time.monotonic`'s clock) and the reason of the next
    deadline, or None for none (then this awaits `receiver` itself). One wake-up per deadline
    rather than a timer per message: messages only move what `deadline()` reads, and it is
    asked again when the wait expires.
    """
    while True:
        due = deadline()
        if due is None:
            await receiver
            return
        at, reason = due
        delay = at - time.monotonic()
        if delay <= 0:
            await close(reason)
            return
        done, _ = await asyncio.wait({receiver}, timeout=delay)
        if done:
            return


class Listening:
    """A Deepgram-protocol server on `host`:`port` (0 picks a free port).

    A subclass starts it with `_start_serving` (in its `__aenter__`) and stops it with
    `_stop_serving`; it says which upgrades it refuses in `_refusal`. Every upgrade response
    carries ``dg-request-id``, as Deepgram's do. It answers Deepgram's token-details request
    (``GET /v1/auth/token``) too: 401 unless the key is `api_key` (when set), else 200.
    """

    api_key: str | None = None  # the key a client must give (None: any, or none)

    def __init__(self, host: str, port: int = 0) -> None:
        self.host = host
        self._port = port
        self._server: Server | None = None

    @property
    def port(self) -> int:
        """The TCP port it listens on (only while started)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return bound_port(self._server)

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/listen`` (only while started): what to set DEEPGRAM_URL to."""
        return f"ws://{self.host}:{self.port}{LISTEN_PATH}"

    def _refusal(self, request: Request) -> Refusal | None:
        """Return why this upgrade is refused, or None to accept it (a subclass says)."""
        raise NotImplementedError

    async def _start_serving(self, handler: Callable[[ServerConnection], Awaitable[None]]) -> None:
        """Listen, running `handler` for each accepted connection; ready when this returns."""
        self._server = await serve(
            handler,
            self.host,
            self._port,
            process_request=self._process_request,
            process_response=self._process_response,
            # JSON out, mu-law in: compressing would cost CPU for little, and in a benchmark
            # make the server, not the proxy, the bottleneck.
            compression=None,
        )

    async def _stop_serving(self) -> None:
        """Close every connection and stop listening; return once all handlers ended."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if urlsplit(request.path).path == AUTH_TOKEN_PATH:
            return self._token_details(connection, request)
        refusal = self._refusal(request)
        return None if refusal is None else respond_refused(connection, refusal)

    def _token_details(self, connection: ServerConnection, request: Request) -> Response:
        """Deepgram's answer to ``GET /v1/auth/token``: 401 for a wrong key, else 200."""
        refusal = check_key(request.headers, api_key=self.api_key)
        if refusal is not None:
            return respond_refused(connection, refusal)
        request_id = str(uuid.uuid4())
        response = connection.respond(HTTPStatus.OK, token_details_body(request_id=request_id))
        set_header(response, "Content-Type", "application/json")
        response.headers[REQUEST_ID_HEADER] = request_id
        return response

    @staticmethod
    def _process_response(
        connection: ServerConnection, request: Request, response: Response
    ) -> None:
        # Deepgram sends dg-request-id on every upgrade response, 101 included; refusals have one.
        if REQUEST_ID_HEADER not in response.headers:
            response.headers[REQUEST_ID_HEADER] = str(uuid.uuid4())
