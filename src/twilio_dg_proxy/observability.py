"""The proxy's observability, in one object the server owns: readiness (`GET /readyz`), the
Prometheus metrics (`GET /metrics`, here or on METRICS_PORT, behind METRICS_TOKEN), the
start-up check of Deepgram, and the tasks that keep them current.

The server routes the two paths here (`readyz`, `metrics`) and enters `running()` before it
listens; the calls and watchers report through `observer` (the hub's).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from .auth import token_allowed, token_of
from .config import Settings
from .http_responses import path_of, respond, respond_json
from .hub import Hub, HubCounters
from .listening import bound_port
from .logs import get_logger
from .metrics import CONTENT_TYPE, LAG_INTERVAL_S, Gauges, ProxyMetrics
from .observations import Observer
from .readiness import Readiness, check_at_start, watch_deepgram

logger = get_logger("observability")

READY_PATH = "/readyz"
METRICS_PATH = "/metrics"

# This process's figures (counters aside): calls, subscribers, viewers, pending streams.
Figures = Callable[[], tuple[int, int, int, int]]


class Observability:
    """Readiness and metrics of one proxy process."""

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        figures: Figures,
        *,
        redis_reachable: Callable[[], bool] = lambda: True,
    ) -> None:
        self.settings = settings
        self.hub = hub
        self.figures = figures
        self.readiness = Readiness(
            redis_reachable=redis_reachable, deepgram=settings.deepgram_start_check != "off"
        )
        self.metrics = ProxyMetrics(self.readiness) if settings.metrics else None
        self.metrics_server: Server | None = None  # on METRICS_PORT, while running

    @property
    def observer(self) -> Observer:
        """What the calls report to: the metrics (which tell readiness), or readiness alone."""
        return self.metrics if self.metrics is not None else self.readiness

    @property
    def serves_metrics_here(self) -> bool:
        """Whether /metrics is served on the proxy's own port."""
        return self.metrics is not None and self.settings.metrics_port is None

    @asynccontextmanager
    async def running(self, *, reuse_port: bool = False) -> AsyncIterator[None]:
        """Check Deepgram (raises ConfigError on a refused key, DEEPGRAM_START_CHECK=required),
        then keep readiness and metrics current, and serve METRICS_PORT if set, until the
        block exits."""
        await check_at_start(self.settings, self.readiness)
        tasks = [self._task(watch_deepgram(self.settings, self.readiness), "watch_deepgram")]
        if self.metrics is not None:
            run = self.metrics.run(self._snapshot, lag_interval_s=LAG_INTERVAL_S)
            tasks.append(self._task(run, "metrics"))
        try:
            if self.metrics is not None and self.settings.metrics_port is not None:
                async with self._metrics_listener(reuse_port):
                    yield
            else:
                yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def metrics_port(self) -> int | None:
        """The port of the METRICS_PORT listener, while it runs."""
        return bound_port(self.metrics_server) if self.metrics_server is not None else None

    def readyz(self, ws: ServerConnection) -> Response:
        """200 `{"status": "ready"}`, or 503 with the reasons."""
        problems = self.readiness.problems()
        body: dict[str, object] = {"status": "not ready" if problems else "ready"}
        if problems:
            body["problems"] = problems
        status = HTTPStatus.SERVICE_UNAVAILABLE if problems else HTTPStatus.OK
        response = respond_json(ws, body, status)
        response.headers["Cache-Control"] = "no-store"
        return response

    def metrics_response(self, ws: ServerConnection, request: Request) -> Response:
        """The exposition (401 without METRICS_TOKEN when it is set; 404 with METRICS off)."""
        if self.metrics is None:
            return ws.respond(HTTPStatus.NOT_FOUND, "Not found: METRICS is false\n")
        token = self.settings.metrics_token
        if token and not token_allowed(token_of(request.path, request.headers), (token,)):
            response = ws.respond(HTTPStatus.UNAUTHORIZED, "Unauthorized: METRICS_TOKEN\n")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        self.metrics.sync(*self._snapshot())  # this process's figures as of now
        return respond(ws, HTTPStatus.OK, self.metrics.exposition(), CONTENT_TYPE)

    def _snapshot(self) -> tuple[HubCounters, Gauges]:
        calls, subscribers, viewers, pending = self.figures()
        ready = not self.readiness.problems()
        return self.hub.counters, Gauges(calls, subscribers, viewers, pending, ready)

    @asynccontextmanager
    async def _metrics_listener(self, reuse_port: bool) -> AsyncIterator[None]:
        """Serve /metrics alone on METRICS_PORT (every worker on the same port, like PORT)."""

        async def never(ws: ServerConnection) -> None:  # every request is answered before
            return None

        def process_request(ws: ServerConnection, request: Request) -> Response:
            if path_of(request.path) == METRICS_PATH:
                return self.metrics_response(ws, request)
            return ws.respond(HTTPStatus.NOT_FOUND, "Not found: only /metrics is here\n")

        async with serve(
            never,
            self.settings.host,
            self.settings.metrics_port,
            process_request=process_request,
            reuse_port=reuse_port,
            server_header=None,
        ) as server:
            self.metrics_server = server
            logger.info("metrics on http://%s:%d/metrics", self.settings.host, bound_port(server))
            try:
                yield
            finally:
                self.metrics_server = None

    @staticmethod
    def _task(coroutine: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine, name=name)
        task.add_done_callback(_log_failure)
        return task


def _log_failure(task: asyncio.Task[None]) -> None:
    """A background task of observability died of a bug: say so (the proxy goes on)."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("%s failed", task.get_name(), exc_info=exc)
