"""Webhooks: signed call events POSTed to each WEBHOOK_URL, never on a call's path.

`WebhookSender` is a `transcripts.TranscriptListener`: the recorder tells it, without
awaiting, that a call started, had a final result, or ended; it builds the event
(`webhook_protocol`) and appends it to each endpoint's bounded queue. One task per endpoint
delivers its queue in order through one shared httpx client: an event leaves its queue
only once the endpoint answered 2xx or it failed for good (at-least-once; retries keep the
event's id, its idempotency key). An endpoint that is slow or down holds up only its own
queue: when that is full, new events for it are dropped, counted and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TypedDict
from urllib.parse import urlsplit

import httpx

from . import __version__, webhook_protocol
from .config import Settings
from .exceptions import ConfigError
from .hub import HubCounters
from .logs import get_logger
from .transcripts import FinishedCall
from .viewer_protocol import CallInfo
from .webhook_protocol import (
    DEFAULT_TIMING,
    Answered,
    Delivered,
    Event,
    GiveUp,
    Outcome,
    RetryIn,
    Timing,
    Unreachable,
)

logger = get_logger("webhooks")

USER_AGENT = f"twilio-dg-proxy/{__version__}"
# What is read of an answer's body (never used): enough to keep the connection for the next
# request when the answer is short, without letting an endpoint make us read megabytes.
MAX_ANSWER_BYTES = 64 << 10
# httpx logs every request at INFO with its full URL, which may hold credentials.
HTTP_CLIENT_LOGGERS = ("httpx", "httpcore")


def endpoint_label(index: int, url: str) -> str:
    """How logs and /healthz name an endpoint: its number and host, never its path, query
    or credentials (`endpoint 1 (hooks.example.com:8443)`)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:  # IPv6
        host = f"[{host}]"
    return f"endpoint {index} ({host}{f':{parts.port}' if parts.port else ''})"


class EndpointQueue:
    """One endpoint's events, oldest first, at most `limit`; the oldest stays at the head
    while it is being delivered, and leaves with `done()`."""

    def __init__(self, index: int, url: str, limit: int) -> None:
        self.url = url
        self.label = endpoint_label(index, url)
        self.limit = limit
        self.events: deque[Event] = deque()
        self.failing = False  # the last attempt failed: logged once until one succeeds
        self.dropping = 0  # events dropped since the queue last had room
        self._ready = asyncio.Event()  # events are queued
        self.idle = asyncio.Event()  # nothing queued or in flight
        self.idle.set()

    def offer(self, event: Event) -> bool:
        """Queue `event`; False if the queue is full (the event is not kept)."""
        if len(self.events) >= self.limit:
            return False
        self.events.append(event)
        self._ready.set()
        self.idle.clear()
        return True

    async def head(self) -> Event:
        """The oldest event, once there is one (it stays queued until `done()`)."""
        while not self.events:
            self._ready.clear()
            await self._ready.wait()
        return self.events[0]

    def done(self) -> None:
        """The head was delivered or given up: remove it."""
        self.events.popleft()
        if not self.events:
            self.idle.set()


class WebhookSender:
    """Builds the events chosen by WEBHOOK_EVENTS and delivers them to every WEBHOOK_URL
    (see the module's docstring). Use it within `running()`; its listener methods never
    await."""

    def __init__(
        self,
        settings: Settings,
        counters: HubCounters,
        *,
        timing: Timing = DEFAULT_TIMING,
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        """Raises ConfigError if WEBHOOK_SECRET is a `whsec_` secret that is not base64.
        `clock` gives Unix seconds (timestamps, Retry-After dates), `jitter` numbers in
        [0, 1) for the backoff."""
        try:
            self._key = webhook_protocol.signing_key(settings.webhook_secret)
        except ValueError as exc:
            raise ConfigError("WEBHOOK_SECRET", str(exc)) from None
        self.counters = counters
        self.events: frozenset[str] = frozenset(settings.webhook_events)
        self.timeout_s = settings.webhook_timeout_s
        self.attempts = settings.webhook_retry_attempts
        self.timing = timing
        self.clock = clock
        self.jitter = jitter
        self.endpoints = [
            EndpointQueue(index, url, settings.webhook_queue_size)
            for index, url in enumerate(settings.webhook_urls, start=1)
        ]
        self._calls: dict[str, CallInfo] = {}  # the calls going on: speakers of their finals
        self._building: set[asyncio.Future[Event]] = set()  # events built on a thread
        self._client: httpx.AsyncClient | None = None

    # The recorder's listener (transcripts.TranscriptListener): no awaiting.

    @property
    def needs_finals(self) -> bool:
        """`call.ended` carries the whole transcript: the recorder keeps it for us."""
        return "call.ended" in self.events

    def call_started(self, info: CallInfo) -> None:
        self._calls[info.call_sid] = info
        if "call.started" in self.events:
            self._emit(lambda: webhook_protocol.call_started(info, **self._stamp()))

    def final(self, call_sid: str, text: str) -> None:
        info = self._calls.get(call_sid)
        if info is not None and "transcript.final" in self.events:
            self._emit(lambda: webhook_protocol.transcript_final(info, text, **self._stamp()))

    def call_finished(self, call: FinishedCall) -> None:
        self._calls.pop(call.info.call_sid, None)
        if "call.ended" in self.events:
            stamp = self._stamp()
            self._emit_from_thread(lambda: webhook_protocol.call_ended(call, **stamp))

    def health(self) -> list[dict[str, object]]:
        """Each endpoint's state for /healthz: events queued, whether it is failing."""
        return [
            {"endpoint": e.label, "queued": len(e.events), "failing": e.failing}
            for e in self.endpoints
        ]

    # Delivery.

    @asynccontextmanager
    async def running(self) -> AsyncIterator[WebhookSender]:
        """Deliver until the block exits; then give what is still queued up to
        `timing.flush_timeout_s` and drop (count, log) what is left."""
        _quiet_http_client_loggers()
        endpoints = len(self.endpoints)
        async with httpx.AsyncClient(
            timeout=self.timeout_s,
            # One request in flight per endpoint, a connection kept for each; twice the room,
            # as a timed-out connection may still be closing.
            limits=httpx.Limits(max_connections=2 * endpoints, max_keepalive_connections=endpoints),
            headers={"user-agent": USER_AGENT, "content-type": "application/json"},
            follow_redirects=False,  # a 3xx fails: the URL should be updated instead
        ) as client:
            self._client = client
            try:
                async with asyncio.TaskGroup() as tasks:
                    workers = [tasks.create_task(self._deliver_all(e)) for e in self.endpoints]
                    try:
                        yield self
                        await self._flush()  # not when leaving on an error or a cancellation
                    finally:
                        for worker in workers:
                            worker.cancel()
            finally:
                self._client = None
                self._count_leftovers()

    async def _deliver_all(self, endpoint: EndpointQueue) -> None:
        """Deliver the endpoint's events one at a time, in order, until cancelled."""
        while True:
            event = await endpoint.head()
            try:
                await self._deliver(endpoint, event)
            except Exception:  # a bug: lose this event, not the endpoint's next ones
                logger.exception(
                    "%s: %s %s of %s lost", endpoint.label, event.type, event.id, event.call_sid
                )
                self.counters.webhooks_failed += 1
            endpoint.done()

    async def _deliver(self, endpoint: EndpointQueue, event: Event) -> None:
        """Try `event` until it is delivered or given up, waiting between attempts."""
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(endpoint, event)
            step = webhook_protocol.next_step(
                outcome, attempt, self.attempts, self.timing, self.clock(), self.jitter
            )
            match step:
                case Delivered():
                    self.counters.webhooks_delivered += 1
                    if endpoint.failing:
                        endpoint.failing = False
                        logger.info("%s: delivering again", endpoint.label)
                    return
                case GiveUp(problem):
                    self.counters.webhooks_failed += 1
                    endpoint.failing = True
                    logger.warning(
                        "%s: %s %s of %s not delivered: %s",
                        endpoint.label,
                        event.type,
                        event.id,
                        event.call_sid,
                        problem,
                    )
                    return
                case RetryIn(delay_s, problem):
                    self.counters.webhooks_retried += 1
                    self._log_retry(endpoint, event, problem, delay_s)
                    await asyncio.sleep(delay_s)

    async def _attempt(self, endpoint: EndpointQueue, event: Event) -> Outcome:
        """POST `event` once, signed now; the endpoint's answer or why there was none."""
        assert self._client is not None  # set while running
        headers = webhook_protocol.signed_headers(
            self._key, event.id, int(self.clock()), event.body
        )
        try:
            # httpx's timeout bounds each phase (connect, each read...); this, the whole.
            async with asyncio.timeout(self.timeout_s):
                async with self._client.stream(
                    "POST", endpoint.url, content=event.body, headers=headers
                ) as response:
                    await _read_some(response, MAX_ANSWER_BYTES)
                    return Answered(response.status_code, response.headers.get("retry-after"))
        except TimeoutError:
            return Unreachable(f"no answer within {self.timeout_s:g} s")
        except httpx.HTTPError as exc:
            # Its type only: httpx's messages may quote the URL, which may hold credentials.
            return Unreachable(type(exc).__name__)

    def _log_retry(
        self, endpoint: EndpointQueue, event: Event, problem: str, delay_s: float
    ) -> None:
        """A WARNING when an endpoint starts failing; DEBUG for each retry after that."""
        if endpoint.failing:
            level = logging.DEBUG
        else:
            endpoint.failing = True
            level = logging.WARNING
        logger.log(
            level,
            "%s: %s %s of %s: %s; trying again in %.1f s",
            endpoint.label,
            event.type,
            event.id,
            event.call_sid,
            problem,
            delay_s,
        )

    async def _flush(self) -> None:
        """Wait, up to `timing.flush_timeout_s`, until every event being built is queued and
        every queue is delivered."""
        if not self._building and all(e.idle.is_set() for e in self.endpoints):
            return
        try:
            async with asyncio.timeout(self.timing.flush_timeout_s):
                while self._building:
                    await asyncio.wait(set(self._building))
                for endpoint in self.endpoints:
                    await endpoint.idle.wait()
        except TimeoutError:
            pass

    def _count_leftovers(self) -> None:
        """Count and log the events never delivered because the sender stopped."""
        for endpoint in self.endpoints:
            left = len(endpoint.events)
            if left:
                self.counters.webhooks_dropped += left
                logger.warning(
                    "%s: %d event(s) not delivered before shutdown", endpoint.label, left
                )
                endpoint.events.clear()
                endpoint.idle.set()

    # Queueing.

    def _emit(self, build: Callable[[], Event]) -> None:
        """Build an event and queue it for every endpoint. Never raises: it runs on the
        call's path (the hub's publish), which a bug here must not break."""
        try:
            event = build()
        except Exception:
            logger.exception("could not build a webhook event")
            self.counters.webhooks_failed += 1
            return
        self._queue(event)

    def _emit_from_thread(self, build: Callable[[], Event]) -> None:
        """Build an event on a worker thread, then queue it: a whole transcript takes up to
        a few hundred milliseconds for the longest calls, which the event loop (every other
        call) must not wait for."""
        future = asyncio.get_running_loop().run_in_executor(None, build)
        self._building.add(future)
        future.add_done_callback(self._built)

    def _built(self, future: asyncio.Future[Event]) -> None:
        self._building.discard(future)
        if future.cancelled():
            return
        try:
            event = future.result()
        except Exception:
            logger.exception("could not build a webhook event")
            self.counters.webhooks_failed += 1
            return
        self._queue(event)

    def _queue(self, event: Event) -> None:
        for endpoint in self.endpoints:
            if endpoint.offer(event):
                if endpoint.dropping:
                    logger.warning(
                        "%s: queue has room again; %d event(s) dropped while it was full",
                        endpoint.label,
                        endpoint.dropping,
                    )
                    endpoint.dropping = 0
                continue
            self.counters.webhooks_dropped += 1
            endpoint.dropping += 1
            # Once per spell of a full queue at WARNING: a dead endpoint must not flood logs.
            logger.log(
                logging.WARNING if endpoint.dropping == 1 else logging.DEBUG,
                "%s: queue full (%d events): dropped %s %s of %s",
                endpoint.label,
                endpoint.limit,
                event.type,
                event.id,
                event.call_sid,
            )

    def _stamp(self) -> _Stamp:
        """A new event's id and creation time."""
        return {"event_id": webhook_protocol.new_event_id(), "now_ms": int(self.clock() * 1000)}


class _Stamp(TypedDict):
    event_id: str
    now_ms: int


async def _read_some(response: httpx.Response, limit: int) -> None:
    """Read up to `limit` bytes of the answer's body and drop them."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > limit:
            break


def _quiet_http_client_loggers() -> None:
    """Keep httpx's per-request lines (full URLs) out of the logs, whatever the level."""
    for name in HTTP_CLIENT_LOGGERS:
        http_logger = logging.getLogger(name)
        http_logger.setLevel(max(http_logger.getEffectiveLevel(), logging.WARNING))
