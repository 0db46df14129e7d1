"""The writer: the recorder's listener that saves each finished call in the store, in the
background, in the order the calls ended.

A call never waits for the store: `call_finished` only queues (at most STORE_QUEUE_CALLS;
beyond, the oldest waiting call is lost, logged and counted: `policy.PendingCalls`). A store
that is down, locked or full is retried with backoff, the same call first, so order is kept.
The writer also purges calls older than RETENTION_DAYS, at start and every `purge_every_s`.
At shutdown it gives the calls still queued `flush_timeout_s` to be saved.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress

from ..exceptions import StoreUnavailable
from ..hub import HubCounters
from ..logs import get_logger
from ..transcripts import FinishedCall
from ..viewer_protocol import CallInfo
from .base import TranscriptStore
from .policy import DEFAULT_BACKOFF, Backoff, PendingCalls

logger = get_logger("store")

PURGE_EVERY_S = 3600.0
FLUSH_TIMEOUT_S = 10.0
DAY_MS = 86_400_000


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class StoreWriter:
    """Saves finished calls in `store` (see the module's docstring); counts in `counters`."""

    def __init__(
        self,
        store: TranscriptStore,
        counters: HubCounters,
        *,
        max_calls: int,
        retention_days: float,
        retry: Backoff = DEFAULT_BACKOFF,
        purge_every_s: float = PURGE_EVERY_S,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.store = store
        self.counters = counters
        self.retention_days = retention_days
        self.retry = retry
        self.purge_every_s = purge_every_s
        self.flush_timeout_s = flush_timeout_s
        self.clock_ms = clock_ms
        self.reachable = True  # whether the store's last answer was a success
        self._pending: PendingCalls[FinishedCall] = PendingCalls(max_calls)
        self._work = asyncio.Event()  # set while calls are pending
        self._idle = asyncio.Event()  # set while none is pending
        self._idle.set()

    # The recorder's listener: never awaits.

    def call_started(self, info: CallInfo) -> None:
        pass

    def final(self, call_sid: str, text: str) -> None:
        pass

    def call_finished(self, call: FinishedCall) -> None:
        dropped = self._pending.add(call)
        if dropped is not None:
            self._lost(dropped, f"more than {self._pending.limit} calls waiting for the store")
        self._work.set()
        self._idle.clear()

    def health(self) -> dict[str, object]:
        """For /healthz: the store's kind, whether it answered last time, calls waiting."""
        return {"kind": self.store.kind, "reachable": self.reachable, "queued": len(self._pending)}

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StoreWriter]:
        """Write and purge until the block exits; then flush what is queued (within
        `flush_timeout_s`: what is left is lost, logged and counted)."""
        tasks = [
            asyncio.create_task(self._write_forever(), name="store writer"),
            asyncio.create_task(self._purge_forever(), name="store purge"),
        ]
        try:
            yield self
            await self._flush()
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with suppress(asyncio.CancelledError):
                    await task

    async def _flush(self) -> None:
        if not self._pending:
            return
        logger.info("saving %d call(s) still waiting for the store", len(self._pending))
        try:
            async with asyncio.timeout(self.flush_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            left = list(self._pending)
            for call in left:
                self._lost(call, "shutting down before the store took it")

    async def _write_forever(self) -> None:
        while True:
            await self._work.wait()
            call = self._pending.begin()
            await self._save(call)
            self._pending.done()
            if not self._pending:
                self._work.clear()
                self._idle.set()

    async def _save(self, call: FinishedCall) -> None:
        """Save `call`, retrying while the store is unavailable; give up only if the store
        refuses it (or on a bug), which loses it."""
        attempt = 0
        while True:
            try:
                await self.store.save(call)
            except StoreUnavailable as exc:
                self._failed(exc, attempt)
                await asyncio.sleep(self.retry.delay(attempt, random.random()))
                attempt += 1
                continue
            except Exception as exc:  # StoreError, or a bug: this call cannot be saved
                logger.exception("[%s] the store refused the call", call.info.call_sid)
                self._lost(call, f"the store refused it: {exc}")
                return
            self.counters.transcripts_stored += 1
            if not self.reachable:
                self.reachable = True
                logger.info(
                    "the %s store is back; %d call(s) waiting",
                    self.store.kind,
                    len(self._pending) - 1,
                )
            return

    def _failed(self, exc: Exception, attempt: int) -> None:
        self.counters.store_errors += 1
        self.reachable = False
        if attempt == 0:  # once per call, not per retry
            logger.warning(
                "the %s store is unavailable, %d call(s) waiting (retrying): %s",
                self.store.kind,
                len(self._pending),
                exc,
            )

    def _lost(self, call: FinishedCall, why: str) -> None:
        self.counters.transcripts_lost += 1
        logger.warning("[%s] transcript lost: %s", call.info.call_sid, why)

    async def _purge_forever(self) -> None:
        while True:
            await self.purge()
            await asyncio.sleep(self.purge_every_s)

    async def purge(self) -> int:
        """Delete the calls that ended more than RETENTION_DAYS ago; how many (0 if the
        store could not be reached: the next purge catches up)."""
        cutoff = self.clock_ms() - round(self.retention_days * DAY_MS)
        try:
            purged = await self.store.purge(cutoff)
        except Exception as exc:  # noqa: BLE001  # logged; the next period tries again
            self.counters.store_errors += 1
            logger.warning("purging old calls failed: %s", exc)
            return 0
        if purged:
            logger.info("purged %d call(s) older than %g days", purged, self.retention_days)
        return purged
