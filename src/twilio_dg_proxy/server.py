"""The WebSocket server: routing by path, the HTTP endpoints, start-up and shutdown."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import ipaddress
import os
import signal
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from . import calls_api
from .auth import (
    SIGNATURE_HEADER,
    token_allowed,
    token_of,
    twilio_signature_check,
    unauthenticated_endpoints,
)
from .backoff import Backoff
from .call import START_MAX_MESSAGE_BYTES, START_TIMEOUT_S, handle_twilio
from .calls_protocol import is_calls_path
from .clients import CHOICE_TIMEOUT_S, NumberOptions, handle_client, handle_viewer
from .config import Settings
from .deadlines import Deadlines
from .deepgram import DEFAULT_PINGS, Pings
from .direct_connection import (
    DirectConnection,
    Guard,
    GuardedConnection,
    forget_handshake_headers,
)
from .exceptions import ConfigError
from .http_responses import path_of, peer_address, respond, respond_json
from .hub import Hub
from .listening import bound_port as bound_port
from .logs import get_logger
from .observability import METRICS_PATH, READY_PATH, Observability
from .store.policy import DEFAULT_BACKOFF
from .store.writer import FLUSH_TIMEOUT_S, StoreWriter, wall_clock_ms
from .transcripts import Recorder
from .viewer import INDEX, Asset, load_assets
from .webhook_protocol import DEFAULT_TIMING, Timing

if TYPE_CHECKING:
    from .redis_broker import RedisBroker
    from .store.base import TranscriptStore
    from .webhooks import WebhookSender

logger = get_logger("server")

TWILIO_PATH = "/twilio"
CLIENT_PATH = "/client"
VIEWER_PATH = "/viewer/ws"  # the viewer protocol: /client's JSON extension
VIEWER_AUTH_PATH = "/viewer/auth"  # lets the page learn whether its token is accepted
ASSETS_PREFIX = "/viewer/"  # the viewer's static files, by exact name
HEALTH_PATH = "/healthz"
WEBSOCKET_PATHS = frozenset({TWILIO_PATH, CLIENT_PATH, VIEWER_PATH})
CLIENT_PATHS = frozenset({CLIENT_PATH, VIEWER_PATH})  # same authentication and limits
# Paths whose messages go to a sink from the socket callbacks (`direct_connection`), not to
# websockets' queue for recv(): Twilio's media, and what a /client watcher sends.
DIRECT_PATHS = frozenset({TWILIO_PATH, CLIENT_PATH})

# The page loads only its own files and talks only to its own origin.
_PAGE_POLICY = (
    "default-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

# How long a closing handshake may take before the connection is dropped (websockets'
# default): what a peer that never answers our close frame can hold a connection for.
CLOSE_TIMEOUT_S = 10.0

# Once no call is left, how long to wait (for their watchers and Deepgram streams to close)
# before collecting garbage.
IDLE_COLLECT_S = 1.0

# Per path limits (TWILIO_MAX_MESSAGE_BYTES, CLIENT_MAX_MESSAGE_BYTES) are set on each
# connection at the upgrade, before any frame is parsed (`GuardedConnection`); this
# is the ceiling for paths that set none.
MAX_MESSAGE_BYTES = 16 << 20


class ProxyServer:
    """The proxy: one Hub shared by every /twilio, /client and /viewer/ws connection."""

    def __init__(
        self,
        settings: Settings,
        *,
        start_timeout_s: float = START_TIMEOUT_S,
        choice_timeout_s: float = CHOICE_TIMEOUT_S,
        deepgram_pings: Pings = DEFAULT_PINGS,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
        webhook_timing: Timing = DEFAULT_TIMING,
        store_retry: Backoff = DEFAULT_BACKOFF,
        store_flush_timeout_s: float = FLUSH_TIMEOUT_S,
    ) -> None:
        """Raises ConfigError if a setting cannot be used (e.g. no twilio package). The
        keyword arguments change waits for tests: `start_timeout_s` and `deepgram_pings` go
        to each call (`call.handle_twilio`), `choice_timeout_s` is how long a /client client
        may take to choose a call, `close_timeout_s` how long a connection may take to
        close; `webhook_timing` the webhooks' backoff and flush; `store_retry` and
        `store_flush_timeout_s` go to the transcript store's writer
        (`store.writer.StoreWriter`)."""
        self.settings = settings
        self.close_timeout_s = close_timeout_s
        self.start_timeout_s = start_timeout_s
        # Each pending stream's wait for its `start`, timed by one timer for all; what its
        # handler calls once started and once ended, bound once for all.
        self._start_deadlines = Deadlines(start_timeout_s)
        self._on_started = self._started
        self._on_ended = self._stream_ended
        self.choice_timeout_s = choice_timeout_s
        self.deepgram_pings = deepgram_pings
        self.webhook_timing = webhook_timing
        self.hub = Hub(
            settings.client_queue_size,
            settings.max_subscribers_per_call,
            history_limit=settings.history_messages,
            history_bytes=settings.history_bytes,
        )
        self.assets = load_assets()
        self.signature_check = twilio_signature_check(settings)
        self._streams: set[ServerConnection] = set()  # open /twilio connections
        self._clients: set[ServerConnection] = set()  # open /client and /viewer/ws connections
        # /twilio connections admitted whose `start` has not been accepted yet.
        self._pending: set[ServerConnection] = set()
        self._no_streams = asyncio.Event()
        self._no_streams.set()
        self.broker: RedisBroker | None = None  # with REDIS_URL, while running
        self.store_retry = store_retry
        self.store_flush_timeout_s = store_flush_timeout_s
        # While running: the recorder of the calls streamed here (the store's writer and the
        # webhooks are its listeners), and with STORE_TRANSCRIPTS, the store and its writer.
        self.recorder: Recorder | None = None
        self.store: TranscriptStore | None = None
        self.store_writer: StoreWriter | None = None
        self.webhooks: WebhookSender | None = None  # with WEBHOOK_URL, while running
        self.observability = Observability(
            settings, self.hub, self._figures, redis_reachable=self._redis_reachable
        )
        self.hub.observer = self.observability.observer

    def route(self, ws: ServerConnection) -> Awaitable[None]:
        """Dispatch an accepted WebSocket by path (unknown paths never get this far): the
        coroutine that serves it, for websockets to await in the connection's task. Not an
        awaiting coroutine itself: a frame less per connection (0.3 KB, issue 11)."""
        path = path_of(ws.request.path if ws.request else "")
        # Checked in process_request (signature, token), never read after: a third of an
        # idle connection (issue 11). The path stays (a /client's options are in its query).
        forget_handshake_headers(ws)
        if path != TWILIO_PATH:
            return self._serve_client(ws, path)
        self._streams.add(ws)  # until `_stream_ended`
        self._no_streams.clear()
        return handle_twilio(
            ws,
            self.hub,
            self.settings,
            start_deadlines=self._start_deadlines,
            deepgram_pings=self.deepgram_pings,
            started=self._on_started,
            ended=self._on_ended,
        )

    async def _serve_client(self, ws: ServerConnection, path: str) -> None:
        self._clients.add(ws)
        try:
            numbers = NumberOptions(self.settings.number_parameters, self.settings.number_wait_s)
            if path == VIEWER_PATH:
                await handle_viewer(ws, self.hub, prepare=self._prepare, numbers=numbers)
            else:
                await handle_client(
                    ws,
                    self.hub,
                    choice_timeout_s=self.choice_timeout_s,
                    prepare=self._prepare,
                    numbers=numbers,
                )
        finally:
            self._clients.discard(ws)

    def _started(self, ws: ServerConnection) -> None:
        """A stream's `start` is accepted: it is a call now, no longer pending."""
        self._pending.discard(ws)
        if isinstance(ws, GuardedConnection):
            ws.release_keepalive()

    def _stream_ended(self, ws: ServerConnection) -> None:
        """A /twilio connection's handler has returned."""
        self._pending.discard(ws)
        self._streams.discard(ws)
        if not self._streams:
            self._no_streams.set()
            asyncio.get_running_loop().call_later(IDLE_COLLECT_S, self._collect_if_idle)

    async def _prepare(self, call_sid: str) -> None:
        """Before a client joins a call: load it if another instance streams it."""
        if self.broker is not None:
            await self.broker.prepare(call_sid)

    def _figures(self) -> tuple[int, int, int, int]:
        """For the metrics: calls streamed here, subscribers, viewers, pending streams."""
        hub = self.hub
        calls = len(hub.local_calls())
        return calls, hub.subscriber_count(), hub.viewer_count(), len(self._pending)

    def _redis_reachable(self) -> bool:
        return self.broker is None or self.broker.reachable

    def _collect_if_idle(self) -> None:
        """Free what the last calls left in reference cycles: under load the collector runs
        on its own, but with `serve`'s high threshold it might not run again while idle."""
        if not self._streams:
            gc.collect()

    async def drain(self, server: Server) -> None:
        """Refuse new calls and watchers (503, and /readyz 503, so that a load balancer sends
        them elsewhere); let calls go on for DRAIN_TIMEOUT, then end the rest properly (each
        forwards its last results and says `close` to its watchers); then close all."""
        self.observability.readiness.draining = True  # still listening: it answers 503s
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

    def process_request(
        self, ws: ServerConnection, request: Request
    ) -> Response | Awaitable[Response] | None:
        """Answer plain HTTP requests (health, the viewer's files, the /calls API, which
        awaits the store); check upgrades (path 404, authentication 401/403, limits 503)."""
        path = path_of(request.path)
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        if path == TWILIO_PATH and upgrade:
            return self._admit_stream(ws, request)
        if path in CLIENT_PATHS and upgrade:
            return self._admit_client(ws, request)
        if path == HEALTH_PATH:
            return respond_json(ws, self.health())
        if path == READY_PATH:
            return self.observability.readyz(ws)
        if path == METRICS_PATH and self.observability.serves_metrics_here:
            return self.observability.metrics_response(ws, request)
        if path in WEBSOCKET_PATHS:
            return None  # websockets answers 426 Upgrade Required
        if path == VIEWER_AUTH_PATH:
            return self._viewer_auth(ws, request)
        if is_calls_path(path):
            tokens = self.settings.client_tokens
            return calls_api.answer(ws, request, self.store, tokens, self.hub.counters)
        asset = None if upgrade else self._asset_at(path)
        if asset is not None:
            return _asset(ws, request, asset)
        return ws.respond(HTTPStatus.NOT_FOUND, f"Not found: {path}\n")

    def _asset_at(self, path: str) -> Asset | None:
        """The viewer's file at `path`: `/` is the page, `/viewer/<name>` the file of exactly
        that name; nothing else (no decoding, no directories, so no way out)."""
        if path == "/":
            return self.assets[INDEX]
        if path.startswith(ASSETS_PREFIX):
            return self.assets.get(path.removeprefix(ASSETS_PREFIX))
        return None

    def _admit_stream(self, ws: ServerConnection, request: Request) -> Response | None:
        counters = self.hub.counters
        if self.observability.readiness.draining:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Shutting down\n")
        if self.signature_check and not self.signature_check(
            request.headers.get(SIGNATURE_HEADER, "")
        ):
            counters.refused_unauthorized += 1
            logger.warning(
                "refused a /twilio upgrade from %s: bad or missing signature", peer_address(ws)
            )
            return ws.respond(
                HTTPStatus.FORBIDDEN, "Forbidden: bad or missing X-Twilio-Signature\n"
            )
        if len(self._pending) >= self.settings.max_pending_streams:
            counters.refused_pending += 1
            logger.warning(
                "refused a /twilio upgrade from %s: MAX_PENDING_STREAMS (%d) not started yet",
                peer_address(ws),
                self.settings.max_pending_streams,
            )
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many pending streams\n")
        if len(self._streams) >= self.settings.max_calls:
            counters.refused_over_limit += 1
            logger.warning("refused a call: MAX_CALLS (%d) reached", self.settings.max_calls)
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many calls\n")
        # Until `start` is accepted (call.handle_twilio raises it to TWILIO_MAX_MESSAGE_BYTES).
        ws.protocol.max_message_size = min(
            START_MAX_MESSAGE_BYTES, self.settings.twilio_max_message_bytes
        )
        self._pending.add(ws)  # until its start is accepted, or it ends (`Guard.lost`)
        if isinstance(ws, GuardedConnection):
            # Keepalive starts with the call (`_started`): a stream not started within
            # START_TIMEOUT_S (10 s) is closed before a first ping (ping_interval, 20 s)
            # would have gone, and a timer costs a pending stream 0.6 KB (uvloop).
            ws.hold_keepalive()
        return None

    def _admit_client(self, ws: ServerConnection, request: Request) -> Response | None:
        counters = self.hub.counters
        if self.observability.readiness.draining:
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Shutting down\n")
        tokens = self.settings.client_tokens
        if tokens and not token_allowed(token_of(request.path, request.headers), tokens):
            counters.refused_unauthorized += 1
            logger.warning(
                "refused a %s upgrade from %s: bad or missing token",
                path_of(request.path),
                peer_address(ws),
            )
            response = ws.respond(
                HTTPStatus.UNAUTHORIZED, "Unauthorized: a client token is required\n"
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        if len(self._clients) >= self.settings.max_subscribers:
            counters.refused_over_limit += 1
            logger.warning(
                "refused a client: MAX_SUBSCRIBERS (%d) reached", self.settings.max_subscribers
            )
            return ws.respond(HTTPStatus.SERVICE_UNAVAILABLE, "Too many clients\n")
        ws.protocol.max_message_size = self.settings.client_max_message_bytes
        return None

    def _viewer_auth(self, ws: ServerConnection, request: Request) -> Response:
        """Whether the page's token opens /viewer/ws (a browser cannot read the status of a
        refused WebSocket upgrade, so the page asks here first): 200 or 401, as JSON."""
        tokens = self.settings.client_tokens
        token = token_of(request.path, request.headers)
        allowed = not tokens or token_allowed(token, tokens)
        if not allowed and token:  # without one, the page is only asking whether it needs one
            self.hub.counters.refused_unauthorized += 1
            logger.warning("refused a viewer token from %s", peer_address(ws))
        body = {"authorized": allowed, "tokenRequired": bool(tokens)}
        response = respond_json(ws, body, HTTPStatus.OK if allowed else HTTPStatus.UNAUTHORIZED)
        response.headers["Cache-Control"] = "no-store"
        return response

    def health(self) -> dict[str, object]:
        """The status served on /healthz: `calls` counts every instance's (with Redis),
        `local_calls` this process's."""
        health: dict[str, object] = {
            "status": "ok",
            "pid": os.getpid(),  # which process answered, when WORKERS share the port
            "calls": len(self.hub.active_calls()),
            "local_calls": len(self._streams),
            "subscribers": self.hub.subscriber_count(),
            "viewers": self.hub.viewer_count(),
            "pending": len(self._pending),  # /twilio streams not started yet
            "totals": dataclasses.asdict(self.hub.counters),
        }
        if self.broker is not None:
            health["redis"] = self.broker.health()
        if self.webhooks is not None:
            health["webhooks"] = self.webhooks.health()
        if self.store_writer is not None:
            health["store"] = self.store_writer.health()
        return health

    def _connection_class(self) -> type[ServerConnection]:
        """Connections that keep to this server's guard. Twilio's and /client's messages are
        handled as they arrive (`call.handle_twilio`, `clients.handle_client`), the viewer's
        wait for its handler to `recv()` them; with DIRECT_RECEIVE off, every path uses
        `recv()`."""
        settings = self.settings
        guard = Guard(
            control_per_s=settings.control_frames_per_s,
            control_burst=settings.control_frames_burst,
            write_buffer_bytes=settings.write_buffer_max_bytes,
            breached=self._breached,
            lost=self._pending.discard,
        )
        if settings.direct_receive:
            return DirectConnection.configured(direct_paths=DIRECT_PATHS, guard=guard)
        return GuardedConnection.configured(guard=guard)

    def _breached(self, ws: ServerConnection, limit: str) -> None:
        """Count and log a connection ended for breaking its guard (`Guard`)."""
        counters = self.hub.counters
        path = path_of(ws.request.path) if ws.request else "?"
        if limit == "control_frames":
            counters.control_floods += 1
            logger.warning("closing %s from %s: too many control frames", path, peer_address(ws))
        else:
            counters.write_buffer_overflows += 1
            logger.warning(
                "dropping %s from %s: over %d bytes waiting to be sent",
                path,
                peer_address(ws),
                self.settings.write_buffer_max_bytes,
            )

    @asynccontextmanager
    async def running(
        self, *, sock: socket.socket | None = None, reuse_port: bool = False
    ) -> AsyncIterator[Server]:
        """Listen until the block exits: on the configured host and port (with SO_REUSEPORT
        if `reuse_port`, so that workers share it), or on the listening socket `sock`. With
        REDIS_URL, join the other instances first (raises BrokerUnavailable if Redis is
        away)."""
        async with AsyncExitStack() as stack:
            # Deepgram is checked first, before anything that must be undone if it fails.
            await stack.enter_async_context(self.observability.running(reuse_port=reuse_port))
            stack.callback(self._stop_recording)  # after the rest: once every call has ended
            if self.settings.redis_url:
                self.broker = await stack.enter_async_context(self._broker())
            if self.settings.store_transcripts:
                await self._start_store(stack)
            if self.settings.webhook_urls:
                # Entered before listening, so it flushes after the last call has ended.
                self.webhooks = await stack.enter_async_context(self._webhooks())
                listeners = self.recording().listeners
                listeners.append(self.webhooks)
                stack.callback(listeners.remove, self.webhooks)
            async with self._listening(sock, reuse_port) as server:
                yield server
        self.broker = None
        self.webhooks = None

    def recording(self) -> Recorder:
        """The recorder of the calls streamed here (created on first use, a sink of the hub
        until the server stops): append a `transcripts.TranscriptListener` to its
        `listeners` to be told of each call's finals and end."""
        if self.recorder is None:
            self.recorder = Recorder(wall_clock_ms, max_bytes=self.settings.transcript_max_bytes)
            self.hub.sinks.append(self.recorder)
        return self.recorder

    def _stop_recording(self) -> None:
        if self.recorder is not None:
            self.hub.sinks.remove(self.recorder)
            self.recorder = None

    async def _start_store(self, stack: AsyncExitStack) -> None:
        """Open the transcript store (raises StoreUnavailable if it cannot be) and save each
        call that ends in it, until `stack` closes: then flush, then close the store."""
        from .store import open_store

        store = await stack.enter_async_context(open_store(self.settings))
        writer = StoreWriter(
            store,
            self.hub.counters,
            max_bytes=self.settings.store_queue_bytes,
            retention_days=self.settings.retention_days,
            retry=self.store_retry,
            flush_timeout_s=self.store_flush_timeout_s,
        )
        await stack.enter_async_context(writer.running())
        self.store, self.store_writer = store, writer
        stack.callback(self._forget_store)
        self.recording().listeners.append(writer)

    def _forget_store(self) -> None:
        self.store = self.store_writer = None

    def _broker(self) -> AbstractAsyncContextManager[RedisBroker]:
        try:
            from .redis_broker import RedisBroker
        except ImportError:
            raise ConfigError(
                "REDIS_URL", "needs redis-py: pip install 'twilio-dg-proxy[redis]'"
            ) from None
        return RedisBroker.running(self.hub, self.settings)

    def _webhooks(self) -> AbstractAsyncContextManager[WebhookSender]:
        try:
            from .webhooks import WebhookSender
        except ImportError:
            raise ConfigError(
                "WEBHOOK_URL", "needs httpx: pip install 'twilio-dg-proxy[webhooks]'"
            ) from None
        sender = WebhookSender(self.settings, self.hub.counters, timing=self.webhook_timing)
        return sender.running()

    @asynccontextmanager
    async def _listening(
        self, sock: socket.socket | None, reuse_port: bool
    ) -> AsyncIterator[Server]:
        address = (None, None) if sock is not None else (self.settings.host, self.settings.port)
        async with serve(
            self.route,
            *address,
            sock=sock,
            reuse_port=reuse_port,
            process_request=self.process_request,
            create_connection=self._connection_class(),
            max_size=MAX_MESSAGE_BYTES,
            close_timeout=self.close_timeout_s,
            compression=None,  # mu-law and short JSON gain little; deflate costs CPU per message
            server_header=None,
            ssl=tls_context(self.settings),
        ) as server:
            yield server


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """A server TLS context from TLS_CERT and TLS_KEY, or None to serve plain ws://."""
    if not settings.tls_cert:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    return context


async def serve_until_signalled(
    settings: Settings,
    *,
    sock: socket.socket | None = None,
    reuse_port: bool = False,
    on_listening: Callable[[], None] | None = None,
) -> None:
    """Run the proxy until SIGINT or SIGTERM, then drain it (`ProxyServer.drain`).

    `sock` and `reuse_port` go to `ProxyServer.running`. Once listening, `on_listening()` is
    called if given (a worker: its supervisor says where it listens, once for all), else the
    address is logged. A second signal cancels the drain: this coroutine then raises
    CancelledError."""
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
    async with proxy.running(sock=sock, reuse_port=reuse_port) as server:
        if on_listening is None:
            log_listening(settings, bound_port(server))
            warn_if_exposed(settings)
        else:
            on_listening()
        await stop.wait()
        logger.info("shutting down: %d active call(s)", len(proxy.hub.local_calls()))
        await proxy.drain(server)


def log_listening(settings: Settings, port: int) -> None:
    """Say where the proxy listens (tests and people look for "listening on")."""
    logger.info(
        "listening on %s://%s:%d (Twilio: %s, clients: %s, viewer: %s://%s:%d/)",
        "wss" if settings.tls_cert else "ws",
        settings.host,
        port,
        TWILIO_PATH,
        CLIENT_PATH,
        "https" if settings.tls_cert else "http",
        settings.host,
        port,
    )


def warn_if_exposed(settings: Settings) -> None:
    """Warn when anyone who can reach a non-loopback address may use an open endpoint."""
    try:
        loopback = ipaddress.ip_address(settings.host).is_loopback
    except ValueError:
        loopback = settings.host == "localhost"
    endpoints = unauthenticated_endpoints(settings)
    if endpoints and not loopback:
        logger.warning(
            "listening on %s with open endpoints: anyone who can reach it may use %s",
            settings.host,
            "; ".join(endpoints),
        )


def _asset(ws: ServerConnection, request: Request, asset: Asset) -> Response:
    """One of the viewer's files; 304 when the browser's copy is current. `no-cache` makes
    the browser revalidate each use, so a new release is picked up on the next load."""
    # Recent websockets pass any method here; older ones refused all but GET before this.
    method = getattr(request, "method", "GET")
    if method not in ("GET", "HEAD"):
        response = ws.respond(HTTPStatus.METHOD_NOT_ALLOWED, f"{method} not allowed\n")
        response.headers["Allow"] = "GET, HEAD"
        return response
    if asset.matches(request.headers.get("If-None-Match", "")):
        response = ws.respond(HTTPStatus.NOT_MODIFIED, "")
        del response.headers["Content-Type"]
        del response.headers["Content-Length"]
    else:
        response = respond(ws, HTTPStatus.OK, asset.body, asset.content_type)
        if method == "HEAD":
            response.body = b""  # with the Content-Length of GET's
    response.headers["ETag"] = asset.etag
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if asset.name == INDEX:
        response.headers["Content-Security-Policy"] = _PAGE_POLICY
    return response
