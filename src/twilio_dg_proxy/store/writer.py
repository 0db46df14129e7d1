"""The writer: the recorder's listener that writes each call to the store as it goes (its
start, its finals as they arrive, its end), in the background, in order.

A call never waits for the store: the listener's methods only queue an event. The writer
takes what is queued in batches, one transaction each (after `batch_delay_s` of gathering,
or at once when a batch is full or at shutdown), so the store's cost grows with the finals,
not with the statements. What waits is bounded in bytes (STORE_QUEUE_BYTES,
`policy.PendingEvents`): beyond it the oldest waiting finals are dropped (counted in
`transcript_finals_dropped`, logged once per call, the call marked truncated), and if only
calls' starts and ends are left, the oldest call not yet started in the store is lost
whole (`transcripts_lost`). A store that is down, locked or full is retried with backoff,
the same batch first, so order is kept. The writer also purges calls older than
RETENTION_DAYS, at start and every `purge_every_s`. At shutdown it gives what is queued
`flush_timeout_s` to be written.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import replace

from ..backoff import Backoff
from ..exceptions import StoreUnavailable
from ..hub import HubCounters
from ..logs import get_logger
from ..transcripts import FinishedCall
from ..viewer_protocol import CallInfo
from .base import CallEnded, CallStarted, FinalResult, StoreEvent, TranscriptStore
from .instance import this_instance
from .policy import DEFAULT_BACKOFF, Kind, PendingEvents, Waiting

logger = get_logger("store")

PURGE_EVERY_S = 3600.0
FLUSH_TIMEOUT_S = 10.0
DAY_MS = 86_400_000
#: How long the writer gathers events before writing them, at most: a crash loses at most
#: this much of each call's transcript.
BATCH_DELAY_S = 0.5
#: A batch (one transaction) holds at most this many events, or about this many bytes.
#: PostgreSQL's driver adapts each row on the event loop (about 11 us a final): 500 keep a
#: batch to a few milliseconds of the loop.
BATCH_EVENTS = 500
BATCH_BYTES = 1 << 20
#: What an event holds besides a final's text, roughly (its objects, a call's info).
EVENT_OVERHEAD = 200
DEFAULT_QUEUE_BYTES = 64 << 20


def wall_clock_ms() -> int:
    return int(time.time() * 1000)


class _Writing:
    """What the writer knows of a call: its callSid, the number of its next final, whether
    finals were dropped (truncated) or the call lost, and how many of its events wait."""

    __slots__ = ("call_sid", "lost", "seq", "truncated", "waiting")

    def __init__(self, call_sid: str) -> None:
        self.call_sid = call_sid
        self.seq = 0
        self.truncated = False
        self.lost = False
        self.waiting = 0


_Entry = Waiting[StoreEvent, _Writing]


class StoreWriter:
    """Writes calls to `store` as they go (see the module's docstring); counts in
    `counters`."""

    #: The store takes each final as it comes: the recorder need not keep them.
    needs_finals = False

    def __init__(
        self,
        store: TranscriptStore,
        counters: HubCounters,
        *,
        max_bytes: int = DEFAULT_QUEUE_BYTES,
        retention_days: float,
        retry: Backoff = DEFAULT_BACKOFF,
        purge_every_s: float = PURGE_EVERY_S,
        flush_timeout_s: float = FLUSH_TIMEOUT_S,
        batch_delay_s: float = BATCH_DELAY_S,
        clock_ms: Callable[[], int] = wall_clock_ms,
        instance: str = "",
    ) -> None:
        self.store = store
        self.counters = counters
        self.retention_days = retention_days
        self.retry = retry
        self.purge_every_s = purge_every_s
        self.flush_timeout_s = flush_timeout_s
        self.batch_delay_s = batch_delay_s
        self.clock_ms = clock_ms
        self.instance = instance or this_instance()
        self.reachable = True  # whether the store's last answer was a success
        self._calls: dict[str, _Writing] = {}  # the live calls
        self._pending: PendingEvents[StoreEvent, _Writing] = PendingEvents(max_bytes)
        self._in_flight: list[_Entry] = []
        self._queued_calls = 0  # calls with events waiting or in flight
        self._work = asyncio.Event()  # set while events are pending
        self._full = asyncio.Event()  # a batch is full, or flushing: write now
        self._idle = asyncio.Event()  # set while nothing is pending or in flight
        self._idle.set()
        self._flushing = False

    # The recorder's listener: never awaits.

    def call_started(self, info: CallInfo) -> None:
        writing = _Writing(info.call_sid)
        self._calls[info.call_sid] = writing
        size = sum(map(len, info.custom_parameters.values()))
        self._queue(CallStarted(info, self.instance), writing, "start", size)

    def final(self, call_sid: str, text: str) -> None:
        writing = self._calls.get(call_sid)
        if writing is None or writing.lost:
            return
        self._queue(FinalResult(call_sid, writing.seq, text), writing, "final", len(text))
        writing.seq += 1

    def call_finished(self, call: FinishedCall) -> None:
        writing = self._calls.pop(call.info.call_sid, None)
        if writing is None or writing.lost:
            return
        # Without its finals (the webhooks' copy, if any): they were queued one by one.
        size = sum(map(len, call.request_ids))
        self._queue(CallEnded(replace(call, finals=())), writing, "end", size)

    def health(self) -> dict[str, object]:
        """For /healthz: the store's kind, whether it answered last time, calls with events
        waiting (or being written), and the bytes those hold."""
        return {
            "kind": self.store.kind,
            "reachable": self.reachable,
            "queued": self._queued_calls,
            "queued_bytes": self._pending.bytes + sum(e.size for e in self._in_flight),
        }

    def _queue(self, event: StoreEvent, writing: _Writing, kind: Kind, size: int) -> None:
        entry: _Entry = Waiting(event, writing, kind, size + EVENT_OVERHEAD)
        if writing.waiting == 0:
            self._queued_calls += 1
        writing.waiting += 1
        for dropped in self._pending.add(entry):
            self._dropped(dropped)
        if len(self._pending) >= BATCH_EVENTS or self._pending.bytes >= BATCH_BYTES:
            self._full.set()
        self._work.set()
        self._idle.clear()

    def _dropped(self, entry: _Entry) -> None:
        writing = entry.call
        self._settled(entry)
        if writing.lost:  # the rest of a call dropped whole
            return
        if entry.kind == "final":
            self.counters.transcript_finals_dropped += 1
            if not writing.truncated:
                writing.truncated = True
                logger.warning(
                    "[%s] final results dropped: more than %d bytes waiting for the store;"
                    " its transcript is marked truncated",
                    writing.call_sid,
                    self._pending.max_bytes,
                )
        else:
            self._lose(writing, f"more than {self._pending.max_bytes} bytes waiting for the store")

    def _settled(self, entry: _Entry) -> None:
        """`entry` is written, dropped or given up: its call waits for one event less."""
        writing = entry.call
        writing.waiting -= 1
        if writing.waiting == 0:
            self._queued_calls -= 1

    def _lose(self, writing: _Writing, why: str) -> None:
        writing.lost = True
        self.counters.transcripts_lost += 1
        logger.warning("[%s] transcript lost: %s", writing.call_sid, why)

    # Writing.

    @asynccontextmanager
    async def running(self) -> AsyncIterator[StoreWriter]:
        """Write and purge until the block exits; then flush what is queued (within
        `flush_timeout_s`: the calls left are lost, logged and counted)."""
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
        if self._idle.is_set():
            return
        logger.info("writing %d call(s) still waiting for the store", self._queued_calls)
        self._flushing = True
        self._full.set()
        try:
            async with asyncio.timeout(self.flush_timeout_s):
                await self._idle.wait()
        except TimeoutError:
            left = [*self._in_flight, *self._pending.clear()]
            self._in_flight = []
            for entry in left:
                self._settled(entry)
            for writing in {id(e.call): e.call for e in left}.values():
                if not writing.lost:
                    self._lose(writing, "shutting down before the store took it")

    async def _write_forever(self) -> None:
        while True:
            await self._work.wait()
            if not self._flushing:
                with suppress(TimeoutError):  # gather a batch, unless one is full
                    async with asyncio.timeout(self.batch_delay_s):
                        await self._full.wait()
            self._in_flight = self._pending.take(BATCH_EVENTS, BATCH_BYTES)
            if len(self._pending) < BATCH_EVENTS and self._pending.bytes < BATCH_BYTES:
                self._full.clear()
            if self._flushing:
                self._full.set()
            await self._write(self._in_flight)
            self._in_flight = []
            if not self._pending:
                self._work.clear()
                self._idle.set()

    async def _write(self, batch: list[_Entry]) -> None:
        """Write `batch` in one transaction, retrying while the store is unavailable. If the
        store refuses it (or on a bug), write it call by call: a call refused is lost."""
        if not batch:
            return
        if await self._write_retrying([self._event_of(e) for e in batch]):
            self._written(batch)
            return
        by_call: dict[int, list[_Entry]] = {}
        for entry in batch:
            by_call.setdefault(id(entry.call), []).append(entry)
        if len(by_call) == 1:
            self._refused(batch)
            return
        for entries in by_call.values():
            if await self._write_retrying([self._event_of(e) for e in entries]):
                self._written(entries)
            else:
                self._refused(entries)

    def _event_of(self, entry: _Entry) -> StoreEvent:
        """The event to write: an end carries whether the writer dropped finals."""
        event = entry.event
        if isinstance(event, CallEnded) and entry.call.truncated and not event.call.truncated:
            return CallEnded(replace(event.call, truncated=True))
        return event

    async def _write_retrying(self, events: Sequence[StoreEvent]) -> bool:
        """Write `events`, retrying while the store is unavailable; False if it refused."""
        attempt = 0
        while True:
            try:
                await self.store.write(events)
            except StoreUnavailable as exc:
                self._failed(exc, attempt)
                await asyncio.sleep(self.retry.delay(attempt + 1, random.random()))
                attempt += 1
                continue
            except Exception:  # StoreError, or a bug: these events cannot be written
                logger.exception("the %s store refused %d event(s)", self.store.kind, len(events))
                return False
            if not self.reachable:
                self.reachable = True
                logger.info(
                    "the %s store is back; %d call(s) waiting", self.store.kind, self._queued_calls
                )
            return True

    def _written(self, entries: list[_Entry]) -> None:
        for entry in entries:
            self._settled(entry)
            if entry.kind == "end":
                self.counters.transcripts_stored += 1

    def _refused(self, entries: list[_Entry]) -> None:
        for entry in entries:
            self._settled(entry)
            if not entry.call.lost:
                self._lose(entry.call, "the store refused it")

    def _failed(self, exc: Exception, attempt: int) -> None:
        self.counters.store_errors += 1
        self.reachable = False
        if attempt == 0:  # once per batch, not per retry
            logger.warning(
                "the %s store is unavailable, %d call(s) waiting (retrying): %s",
                self.store.kind,
                self._queued_calls,
                exc,
            )

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
