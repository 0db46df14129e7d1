"""The WebSocket server: routing by path, the HTTP endpoints, start-up and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from .call import handle_twilio
from .clients import handle_client
from .config import Settings
from .hub import Hub
from .logs import get_logger

logger = get_logger("server")

TWILIO_PATH = "/twilio"
CLIENT_PATH = "/client"
HEALTH_PATH = "/healthz"
WEBSOCKET_PATHS = frozenset({TWILIO_PATH, CLIENT_PATH})

# Twilio's largest message is a media frame (~300 bytes; payloads are capped at 16 kB by the
# parser) and a client only sends a callSid: 64 KiB is ample and bounds memory per peer.
MAX_MESSAGE_BYTES = 64 * 1024

_HELP = (
    "twilio-dg-proxy\n\n"
    "WebSocket endpoints:\n"
    f"  {TWILIO_PATH}  Twilio Media Streams (point <Stream url> here)\n"
    f"  {CLIENT_PATH}  watch a call: receive the callSid list, send one, get its transcripts\n"
    f"HTTP: {HEALTH_PATH} (JSON status)\n"
)


class ProxyServer:
    """The proxy: one Hub shared by every /twilio and /client connection."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.hub = Hub(settings.client_queue_size)
        self._streams: set[ServerConnection] = set()  # open /twilio connections
        self._no_streams = asyncio.Event()
        self._no_streams.set()

    async def route(self, ws: ServerConnection) -> None:
        """Dispatch an accepted WebSocket by path (unknown paths never get this far)."""
        path = _path(ws.request.path if ws.request else "")
        if path != TWILIO_PATH:
            await handle_client(ws, self.hub)
            return
        self._streams.add(ws)
        self._no_streams.clear()
        try:
            await handle_twilio(ws, self.hub, self.settings)
        finally:
            self._streams.discard(ws)
            if not self._streams:
                self._no_streams.set()

    async def drain(self, server: Server) -> None:
        """Stop accepting; let calls go on for DRAIN_TIMEOUT, then end the rest properly
        (each forwards its last results and says `close` to its watchers); then close all."""
        server.server.close()  # the listening socket only: open connections carry on
        calls = len(self._streams)
        if calls:
            logger.info(
                "draining: %d call(s) may go on for %.0f s", calls, self.settings.drain_timeout_s
            )
        try:
            async with asyncio.timeout(self.settings.drain_timeout_s):
                await self._no_streams.wait()
        except TimeoutError:
            logger.warning(
                "ending %d call(s) still running after the drain timeout", len(self._streams)
            )
            # Each call then ends as at a hang-up: flush, CloseStream, last results, `close`.
            await asyncio.gather(
                *(ws.close(CloseCode.GOING_AWAY, "server shutting down") for ws in self._streams)
            )
            await self._no_streams.wait()
        server.close()  # the watchers left: 1001 to those who never chose a call
        await server.wait_closed()

    def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer plain HTTP requests and refuse upgrades to unknown paths with 404."""
        path = _path(request.path)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path in WEBSOCKET_PATHS and upgrade:
            return None  # go on with the handshake
        if path == HEALTH_PATH:
            return _json(ws, self.health())
        if path == "/" and not upgrade:
            return ws.respond(HTTPStatus.OK, _HELP)
        if path in WEBSOCKET_PATHS:
            return None  # websockets answers 426 Upgrade Required
        return ws.respond(HTTPStatus.NOT_FOUND, f"Not found: {path}\n")

    def health(self) -> dict[str, object]:
        """The status served on /healthz."""
        return {
            "status": "ok",
            "calls": len(self.hub.active_calls()),
            "subscribers": self.hub.subscriber_count(),
            "totals": dataclasses.asdict(self.hub.counters),
        }

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        """Listen on the configured host and port until the block exits."""
        async with serve(
            self.route,
            self.settings.host,
            self.settings.port,
            process_request=self.process_request,
            max_size=MAX_MESSAGE_BYTES,
            compression=None,  # mu-law and short JSON gain little; deflate costs CPU per message
            server_header=None,
        ) as server:
            yield server


def bound_port(server: Server) -> int:
    """The TCP port the server listens on (useful with PORT=0)."""
    return int(server.sockets[0].getsockname()[1])


async def serve_until_signalled(settings: Settings) -> None:
    """Run the proxy until SIGINT or SIGTERM, then drain it (`ProxyServer.drain`).

    A second signal cancels the drain: this coroutine then raises CancelledError."""
    proxy = ProxyServer(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None

    def on_signal() -> None:
        if stop.is_set():
            logger.warning("second signal: exiting now")
            main.cancel()
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    async with proxy.running() as server:
        logger.info(
            "listening on ws://%s:%d (Twilio: %s, clients: %s)",
            settings.host,
            bound_port(server),
            TWILIO_PATH,
            CLIENT_PATH,
        )
        await stop.wait()
        logger.info("shutting down: %d active call(s)", len(proxy.hub.active_calls()))
        await proxy.drain(server)


def _path(target: str) -> str:
    return urlsplit(target).path


def _json(ws: ServerConnection, body: object) -> Response:
    response = ws.respond(HTTPStatus.OK, json.dumps(body) + "\n")
    del response.headers["Content-Type"]
    response.headers["Content-Type"] = "application/json"
    return response
