"""The broker's writing side (`redis_broker`): the calls streamed here, as the hub's sink,
written to Redis in order (a call's record in the registry, each Deepgram message once to
the call's stream, its end), many writes per round trip. Redis away: writes wait in a
bounded queue (`broker_protocol.PublishQueue`); Redis restarted empty: the last ones are
made again."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from redis.exceptions import ResponseError

from . import broker_protocol as wire
from .deepgram_protocol import Kind
from .hub import Ending, HubCounters
from .logs import get_logger
from .redis_link import TRANSIENT_REPLIES, RedisLink, ask_epoch
from .viewer_protocol import CallInfo

logger = get_logger("broker")

WRITES_PER_ROUND_TRIP = 500
FEED_MAX = 10_000  # call feed entries kept (starts and ends of calls)
# Writes made lately, made again if Redis restarts: what it held but no reader had read yet
# (readers follow within milliseconds, so this covers far more than they can lag).
RECENT_WRITES = 2000
_DUPLICATE_ID = "equal or smaller than the target stream top item"


class Publisher:
    """The hub's sink for the calls streamed here (never awaits), and the loop that writes
    what it is given (`run`)."""

    def __init__(
        self,
        link: RedisLink,
        keys: wire.Keys,
        queue: wire.PublishQueue,
        *,
        instance: str,
        stream_max: int,
        keep_s: int,
    ) -> None:
        self.link = link
        self.keys = keys
        self.queue = queue
        self.instance = instance
        self.stream_max = stream_max
        self.keep_s = keep_s
        self.counters: HubCounters = link.counters
        self.own: dict[str, wire.CallRecord] = {}  # calls streamed here
        self.wake = asyncio.Event()  # there is work
        self.written_epoch = ""  # the Redis last written to
        self.check_epoch = False  # the heartbeat saw a new epoch: check it before writing
        self._refused = 0  # writes Redis refused for good (logged now and then)
        self._recent: deque[wire.Publish] = deque(maxlen=RECENT_WRITES)

    # The hub's sink.

    def call_opened(self, info: CallInfo) -> None:
        record = wire.CallRecord(info, self.instance)
        self.own[info.call_sid] = record
        self.queue.opened(record)
        self.wake.set()

    def message(self, call_sid: str, text: str, kind: Kind) -> None:
        del kind  # every message goes to Redis, whatever it is
        if not self.queue.message(call_sid, text):
            self.counters.redis_dropped += 1
            if _now_and_then(self.queue.dropped):
                logger.warning(
                    "Redis write queue full (%d): %d message(s) dropped for other instances",
                    self.queue.limit,
                    self.queue.dropped,
                )
        self.wake.set()

    def call_ended(self, call_sid: str, ending: Ending) -> None:
        self.own.pop(call_sid, None)
        self.queue.end(call_sid, ending)
        self.wake.set()

    # Writing.

    async def run(self) -> None:
        """Write what is queued, in order, until the broker stops."""
        await self.link.keep_at(self._write_some, "publishing to Redis")

    async def flush(self, within_s: float) -> None:
        """Wait until the queue is written, for `within_s` at most."""
        try:
            async with asyncio.timeout(within_s):
                while len(self.queue):  # noqa: ASYNC110 - `run` empties it
                    await asyncio.sleep(0.01)
        except TimeoutError:
            logger.warning("leaving with %d write(s) for Redis not made", len(self.queue))

    async def _write_some(self, failures: int) -> bool:
        if not len(self.queue):
            self.wake.clear()
            await self.wake.wait()
            return False
        if failures or self.check_epoch:
            self.check_epoch = False
            await self._rewrite_if_restarted()
        writes = self.queue.take(WRITES_PER_ROUND_TRIP)
        try:
            await self._write(writes)
        except BaseException:
            self.queue.back(writes)
            raise
        self.queue.done(writes)
        self._recent.extend(writes)
        return True

    async def _rewrite_if_restarted(self) -> None:
        """After a failed write: if Redis has restarted empty since the last write, write the
        recent writes again first (ids are kept, so readers skip what they already have)."""
        pipe = self.link.redis.pipeline(transaction=False)
        ask_epoch(pipe, self.keys)
        epoch = str((await pipe.execute())[1])
        restarted = bool(self.written_epoch) and epoch != self.written_epoch
        self.written_epoch = epoch
        if restarted and self._recent:
            again = wire.again_after_restart(self._recent)
            self._recent.clear()
            self.queue.again(again)
            logger.info("Redis restarted: writing the last %d write(s) again", len(again))

    async def _write(self, writes: list[wire.Publish]) -> None:
        pipe = self.link.redis.pipeline(transaction=False)
        for write in writes:
            self._queue_commands(pipe, write)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, TRANSIENT_REPLIES):
                raise reply  # the batch is tried again, as when Redis is away
            if isinstance(reply, ResponseError) and _DUPLICATE_ID not in str(reply):
                self.counters.redis_errors += 1
                self._refused += 1
                if _now_and_then(self._refused):
                    logger.error("Redis refused %d write(s), the last: %s", self._refused, reply)

    def _queue_commands(self, pipe: Any, write: wire.Publish) -> None:
        key = self.keys.call(write.call_sid)
        entry_id = wire.entry_id(write.number)
        if write.kind == "opened":
            assert write.record is not None
            pipe.delete(key)  # a stream left by an earlier call with this callSid
            pipe.xadd(key, wire.open_entry(), id=entry_id, maxlen=self.stream_max)
            list_call(pipe, self.keys, write.record)
        elif write.kind == "message":
            fields = wire.message_entry(write.text)
            pipe.xadd(key, fields, id=entry_id, maxlen=self.stream_max)
        else:
            assert write.ending is not None
            pipe.xadd(key, wire.end_entry(write.ending), id=entry_id, maxlen=self.stream_max)
            pipe.hdel(self.keys.calls, write.call_sid)
            unlist_call(pipe, self.keys, write.call_sid, write.ending, self.keep_s)

    async def register_again(self) -> None:
        """Redis lost this instance's keys (a restart): list its calls again."""
        pipe = self.link.redis.pipeline(transaction=False)
        for record in self.own.values():
            list_call(pipe, self.keys, record)
        await pipe.execute()
        logger.info("registered %d call(s) again after Redis lost them", len(self.own))


def list_call(pipe: Any, keys: wire.Keys, record: wire.CallRecord) -> None:
    """Queue the commands that list a call: in the registry, and `started` on the feed."""
    pipe.hset(keys.calls, record.info.call_sid, record.dumps())
    pipe.xadd(keys.feed, wire.started_entry(record), maxlen=FEED_MAX)


def unlist_call(pipe: Any, keys: wire.Keys, call_sid: str, ending: Ending, keep_s: int) -> None:
    """Queue the commands that follow a call's removal from the registry: `ended` on the
    feed, and its stream kept `keep_s` more for the watchers still loading it."""
    pipe.expire(keys.call(call_sid), keep_s)
    pipe.xadd(keys.feed, wire.ended_entry(call_sid, ending), maxlen=FEED_MAX)


def _now_and_then(count: int) -> bool:
    """Whether to log the count-th of a repeated event: the first, then every 1000th."""
    return count == 1 or count % 1000 == 0
