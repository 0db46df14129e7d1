"""The Redis broker (REDIS_URL): every instance shares one view of all calls.

An instance publishes the calls it streams (the hub's `CallSink`): a call's record in the
registry, each Deepgram message once to the call's stream, its end; and a heartbeat. It
mirrors every other instance's calls into its own hub (`remote`), so its clients list and
choose them as if they were local. For the calls its own watchers follow, one reader reads
their streams together (one blocking XREAD on one connection, whatever the number of calls
and watchers) and publishes into the hub, whose bounded queues fan out as for a local call.

Redis away: calls and their local watchers go on; writes wait in order in a bounded queue
(`broker_protocol.PublishQueue`) and go out when it is back. What is said on the wire, and
the policies, are in `broker_protocol`; docs/scaling-out.md has the picture.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import Any, cast
from urllib.parse import urlsplit

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import (
    BusyLoadingError,
    ClusterDownError,
    MasterDownError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TryAgainError,
)

from . import broker_protocol as wire
from .backoff import Backoff
from .config import Settings
from .deepgram_protocol import Kind
from .exceptions import BrokerUnavailable, DuplicateCall
from .hub import Ending, Hub
from .logs import get_logger
from .viewer_protocol import CallInfo

logger = get_logger("broker")

# One Redis or a Redis Cluster: the same commands, routed by key for a Cluster.
Client = Redis | RedisCluster

Entry = tuple[str, Mapping[str, str]]  # a stream entry as redis-py reads it: (id, fields)
# redis-py's hints cover bytes and str at once; with decode_responses every reply is str.
Fields = dict[Any, Any]

# Redis could not do what was asked: retry later, in order. Any error reply counts (a
# replica promoted, memory full, a permission removed), not only a lost connection: a loop
# that let one escape would end the broker, and the calls with it.
_UNREACHABLE = (
    RedisError,
    OSError,
    RedisClusterException,  # a Cluster client that cannot find its nodes (not a RedisError)
)
# Replies to one write that a later attempt may not get: the whole batch is tried again.
# Other error replies are about that write alone (e.g. a key of the wrong type): dropped.
_TRANSIENT_REPLIES = (
    ReadOnlyError,
    OutOfMemoryError,
    BusyLoadingError,
    TryAgainError,
    MasterDownError,
    ClusterDownError,
    NoPermissionError,
)
_DUPLICATE_ID = "equal or smaller than the target stream top item"
_RETRY = Backoff(0.1, 2.0)
WRITES_PER_ROUND_TRIP = 500
READ_COUNT = 1000  # entries per stream per XREAD
FEED_MAX = 10_000  # call feed entries kept (starts and ends of calls)
SETTLE_S = 1.0  # a followed call with no watcher left is dropped from the reads after this
# Writes made lately, made again if Redis restarts: what it held but no reader had read yet
# (readers follow within milliseconds, so this covers far more than they can lag).
RECENT_WRITES = 2000


class RedisBroker:
    """Connects a `Hub` to the other instances through Redis (use `RedisBroker.running`)."""

    def __init__(
        self, hub: Hub, settings: Settings, *, instance: str = "", block_ms: int = 100
    ) -> None:
        self.hub = hub
        self.keys = wire.Keys(settings.redis_key_prefix)
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.where = _where(settings.redis_url)
        self.queue = wire.PublishQueue(settings.redis_publish_buffer)
        self.stream_max = settings.redis_stream_max_messages
        self.keep_s = settings.redis_stream_keep_s
        # A heartbeat every fifth of the timeout T, each valid for 2/5 of it; an instance
        # whose key is found missing, and still missing more than T/5 later, is gone
        # (`wire.Liveness`). Killed just after a beat: its key lapses at 0.4 T, is found
        # missing by 0.6 T and judged by T. Alive, it must be late by about 0.4 T to be.
        timeout_s = settings.redis_heartbeat_timeout_s
        self.heartbeat_s = timeout_s / 5
        self.heartbeat_ttl_ms = int(timeout_s * 400)
        self.liveness = wire.Liveness(grace_s=timeout_s / 5)
        self.block_ms = block_ms
        self.url = settings.redis_url
        self.options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2.0,
            "retry": None,  # the broker retries itself, in order, with its own backoff
            "client_name": f"twilio-dg-proxy:{self.instance}",
        }
        # Set by `_connect`: for writes, and for the blocking reads (on one Redis, a
        # connection of their own, so writes never wait behind them).
        self.redis: Client = Redis.from_url(self.url, socket_timeout=5.0, **self.options)
        self.reader: Client = self.redis
        self.cluster = False
        self._shard_wake = [asyncio.Event() for _ in range(wire.SHARDS)]
        self.reachable = True
        self._stopping = False
        self._wake = asyncio.Event()  # the publisher has work
        self._own: dict[str, wire.CallRecord] = {}  # calls streamed here
        self._remote: dict[str, wire.CallRecord] = {}  # calls mirrored from elsewhere
        self._followed: dict[str, str] = {}  # remote callSid → last entry id read
        self._idle_since: dict[str, float] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._feed_last = "0-0"
        self._epoch = ""  # as the heartbeat last saw it
        self._written_epoch = ""  # the Redis the publisher last wrote to
        self._check_epoch = False  # the heartbeat saw a new epoch: the publisher checks it
        self._refused = 0  # writes Redis refused for good (logged now and then)
        self._recent: deque[wire.Publish] = deque(maxlen=RECENT_WRITES)

    # Life.

    @classmethod
    @asynccontextmanager
    async def running(cls, hub: Hub, settings: Settings) -> AsyncIterator[RedisBroker]:
        """Connect (raises BrokerUnavailable if Redis cannot be reached), mirror the calls
        already active, then publish and read until the block exits; at exit, write what
        is queued (for a few seconds at most) and say this instance is leaving."""
        broker = cls(hub, settings)
        try:
            await broker._join()
            hub.sinks.append(broker)
            async with asyncio.TaskGroup() as tasks:
                jobs = [
                    tasks.create_task(broker._publish_forever()),
                    tasks.create_task(broker._heartbeat_forever()),
                ]
                readers = [tasks.create_task(broker._read_forever(g)) for g in broker._groups()]
                try:
                    yield broker
                finally:
                    await broker._flush(within_s=3.0)
                    await broker._stop_reading(readers)
                    for job in jobs:
                        job.cancel()
            await broker._leave()
        finally:
            if broker in hub.sinks:
                hub.sinks.remove(broker)
            if broker.reader is not broker.redis:
                await broker.reader.aclose()
            await broker.redis.aclose()

    async def _connect(self) -> None:
        """Find out whether REDIS_URL is one Redis or a node of a Redis Cluster, and connect
        the clients for it."""
        info = await self.redis.info("cluster")
        if info.get("cluster_enabled"):
            await self.redis.aclose()
            self.cluster = True
            # Blocking reads take connections of their own from each node's pool.
            self.redis = self.reader = RedisCluster.from_url(
                self.url, socket_timeout=5.0 + self.block_ms / 1000, **self.options
            )
            await self.redis.initialize()
        else:
            self.reader = Redis.from_url(
                self.url,
                socket_timeout=5.0 + self.block_ms / 1000,
                single_connection_client=True,
                **self.options,
            )

    def _groups(self) -> list[int | None]:
        """The reads: None reads the call feed (and on one Redis every followed call); on
        a Cluster, shard k's followed calls get a read of their own."""
        return [None, *range(wire.SHARDS)] if self.cluster else [None]

    async def _join(self) -> None:
        try:
            await self._connect()
            latest = await self.redis.xrevrange(self.keys.feed, count=1)
            records = await self.redis.hgetall(self.keys.calls)
            self._feed_last = str(latest[0][0]) if latest else "0-0"
            for raw in map(str, records.values()):
                record = wire.load_record(raw)
                if record is not None:
                    self._mirror(record)
            await self._beat()
            self._written_epoch = self._epoch
        except _UNREACHABLE as exc:
            raise BrokerUnavailable(f"cannot reach Redis at {self.where}: {exc}") from None
        logger.info(
            "sharing calls through Redis at %s as instance %s (%d call(s) elsewhere)",
            self.where,
            self.instance,
            len(self._remote),
        )

    async def _stop_reading(self, readers: list[asyncio.Task[None]]) -> None:
        """Stop every loop: let the readers finish their reads, then cancel what is left.
        (redis-py may swallow a cancellation that lands inside a command, stuck in a Cluster
        client's read, or in a reconnect: so each loop also checks `_stopping`.)"""
        self._stopping = True  # every loop ends at its next turn
        self._wake.set()
        for wake in self._shard_wake:
            wake.set()
        await asyncio.wait(readers, timeout=self.block_ms / 1000 + 2.0)
        for reader in readers:
            reader.cancel()

    async def _leave(self) -> None:
        try:
            await self.redis.delete(self.keys.instance(self.instance))
        except (RedisError, OSError):
            pass  # its heartbeat expires on its own

    async def _flush(self, within_s: float) -> None:
        try:
            async with asyncio.timeout(within_s):
                while len(self.queue):  # noqa: ASYNC110 - the publisher empties it
                    await asyncio.sleep(0.01)
        except TimeoutError:
            logger.warning("leaving with %d write(s) for Redis not made", len(self.queue))

    def health(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "reachable": self.reachable,
            "queued": len(self.queue),
            "following": len(self._followed),
        }

    # The hub's sink: the calls streamed here. Never awaits.

    def call_opened(self, info: CallInfo) -> None:
        record = wire.CallRecord(info, self.instance)
        self._own[info.call_sid] = record
        self.queue.opened(record)
        self._wake.set()

    def message(self, call_sid: str, text: str, kind: Kind) -> None:
        del kind  # every message goes to Redis, whatever it is
        if not self.queue.message(call_sid, text):
            self.hub.counters.redis_dropped += 1
            if self.queue.dropped == 1 or self.queue.dropped % 1000 == 0:
                logger.warning(
                    "Redis write queue full (%d): %d message(s) dropped for other instances",
                    self.queue.limit,
                    self.queue.dropped,
                )
        self._wake.set()

    def call_ended(self, call_sid: str, ending: Ending) -> None:
        self._own.pop(call_sid, None)
        self.queue.end(call_sid, ending)
        self._wake.set()

    # Publishing.

    async def _publish_forever(self) -> None:
        attempt = 0
        while not self._stopping:
            if not len(self.queue):
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                if attempt or self._check_epoch:
                    self._check_epoch = False
                    await self._rewrite_if_restarted()
                writes = self.queue.take(WRITES_PER_ROUND_TRIP)
                try:
                    await self._write(writes)
                except BaseException:
                    self.queue.back(writes)
                    raise
            except _UNREACHABLE as exc:
                attempt += 1
                await self._pause(attempt, exc)
                continue
            except Exception:  # a bug: the calls must go on; try again later
                logger.exception("publishing to Redis failed")
                attempt += 1
                await self._pause(attempt, None)
                continue
            attempt = 0
            self.queue.done(writes)
            self._recent.extend(writes)
            self._found()

    async def _rewrite_if_restarted(self) -> None:
        """After a failed write: if Redis has restarted empty since the last write, write the
        recent writes again first (ids are kept, so readers skip what they already have)."""
        epoch = await self._current_epoch()
        restarted = bool(self._written_epoch) and epoch != self._written_epoch
        self._written_epoch = epoch
        if restarted and self._recent:
            ended = {w.call_sid for w in self._recent if w.kind == "end"}
            again = [w for w in self._recent if w.kind != "opened" or w.call_sid not in ended]
            self._recent.clear()
            self.queue.again(again)
            logger.info("Redis restarted: writing the last %d write(s) again", len(again))

    async def _current_epoch(self) -> str:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.epoch, secrets.token_hex(8), nx=True)
        pipe.get(self.keys.epoch)
        return str((await pipe.execute())[1])

    async def _write(self, writes: list[wire.Publish]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for write in writes:
            self._queue_commands(pipe, write)
        replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, _TRANSIENT_REPLIES):
                raise reply  # the batch is tried again, as when Redis is away
            if isinstance(reply, ResponseError) and _DUPLICATE_ID not in str(reply):
                self.hub.counters.redis_errors += 1
                self._refused += 1
                if self._refused == 1 or self._refused % 1000 == 0:
                    logger.error("Redis refused %d write(s), the last: %s", self._refused, reply)

    def _queue_commands(self, pipe: Any, write: wire.Publish) -> None:
        key = self.keys.call(write.call_sid)
        entry_id = wire.entry_id(write.number)
        if write.kind == "opened":
            assert write.record is not None
            pipe.delete(key)  # a stream left by an earlier call with this callSid
            pipe.xadd(key, wire.open_entry(), id=entry_id, maxlen=self.stream_max)
            pipe.hset(self.keys.calls, write.call_sid, write.record.dumps())
            pipe.xadd(self.keys.feed, wire.started_entry(write.record), maxlen=FEED_MAX)
        elif write.kind == "message":
            fields = wire.message_entry(write.text)
            pipe.xadd(key, fields, id=entry_id, maxlen=self.stream_max)
        else:
            assert write.ending is not None
            pipe.xadd(key, wire.end_entry(write.ending), id=entry_id, maxlen=self.stream_max)
            pipe.expire(key, self.keep_s)
            pipe.hdel(self.keys.calls, write.call_sid)
            ended = wire.ended_entry(write.call_sid, write.ending)
            pipe.xadd(self.keys.feed, ended, maxlen=FEED_MAX)

    def _lost(self, exc: BaseException) -> None:
        self.hub.counters.redis_errors += 1
        if self.reachable:
            self.reachable = False
            logger.warning(
                "Redis at %s unreachable (%s): calls go on; %d write(s) wait for it",
                self.where,
                type(exc).__name__,
                len(self.queue),
            )

    async def _pause(self, attempt: int, exc: BaseException | None) -> None:
        """After failed attempt `attempt` (1-based): note that Redis is away (`exc`: why;
        None for a bug, already logged), then wait."""
        if exc is not None:
            self._lost(exc)
        await asyncio.sleep(_RETRY.delay(attempt, random.random()))

    def _found(self) -> None:
        if not self.reachable:
            self.reachable = True
            logger.info("Redis at %s reachable again", self.where)

    # Reading the calls followed here.

    async def prepare(self, call_sid: str) -> None:
        """Before a watcher here joins `call_sid`: if another instance streams it, load its
        history from Redis into the hub and follow its stream. Raises BrokerUnavailable."""
        if call_sid not in self._remote:
            return
        self._idle_since.pop(call_sid, None)
        lock = self._loading.setdefault(call_sid, asyncio.Lock())
        async with lock:
            if call_sid in self._remote and call_sid not in self._followed:
                await self._load(call_sid)

    async def _load(self, call_sid: str) -> None:
        try:
            entries = await self.redis.xrange(self.keys.call(call_sid))
        except (RedisError, OSError) as exc:
            self._lost(exc)
            raise BrokerUnavailable(f"Redis unreachable: cannot follow {call_sid}") from None
        if call_sid not in self._remote:
            return  # it ended meanwhile
        replay = wire.replay(cast(list[Entry], entries))
        self.hub.replace_history(call_sid, replay.messages, replay.truncated)
        if replay.ending is not None:
            self._end_remote(call_sid, replay.ending)
        else:
            self._followed[call_sid] = replay.last_id
            self._shard_wake[wire.shard_of(call_sid)].set()

    async def _read_forever(self, group: int | None) -> None:
        """Read one group of streams (`_groups`) and apply what comes, until cancelled."""
        attempt = 0
        while not self._stopping:
            streams, sids = self._streams_of(group)
            if not streams:  # a shard none of whose calls is followed here
                wake = self._shard_wake[group or 0]
                wake.clear()
                await wake.wait()
                continue
            try:
                reply = await self.reader.xread(streams, count=READ_COUNT, block=self.block_ms)
                ended = self._dispatch(reply or [], sids)
                for sid, ending in ended:
                    await self._catch_up(sid, ending)
            except _UNREACHABLE as exc:
                attempt += 1
                await self._pause(attempt, exc)
                continue
            except Exception:  # a bug: the calls must go on; try again later
                logger.exception("reading from Redis failed")
                attempt += 1
                await self._pause(attempt, None)
                continue
            attempt = 0
            self._found()

    def _streams_of(self, group: int | None) -> tuple[Fields, dict[str, str]]:
        """The streams of `group` with the id to read after, and callSid by stream key."""
        streams: Fields = {self.keys.feed: self._feed_last} if group is None else {}
        if group is None and self.cluster:
            return streams, {}
        sids = {
            self.keys.call(sid): sid
            for sid in self._followed
            if group is None or wire.shard_of(sid) == group
        }
        streams.update({key: self._followed[sid] for key, sid in sids.items()})
        return streams, sids

    def _dispatch(self, reply: Any, sids: Mapping[str, str]) -> list[tuple[str, Ending]]:
        """Apply one XREAD reply; returns the followed calls the feed says have ended."""
        ended: list[tuple[str, Ending]] = []
        for key, entries in reply.items() if isinstance(reply, dict) else reply:
            if key == self.keys.feed:
                ended += self._on_feed(entries)
            elif key in sids:
                self._on_call(sids[key], entries)
        return ended

    def _on_feed(self, entries: Iterable[Entry]) -> list[tuple[str, Ending]]:
        followed_ended: list[tuple[str, Ending]] = []
        for entry_id, fields in entries:
            self._feed_last = entry_id
            event = wire.parse_feed_entry(fields)
            if event is None:
                continue
            if event.kind == wire.STARTED:
                assert event.record is not None
                self._mirror(event.record)
            elif event.call_sid in self._remote:
                assert event.ending is not None
                if event.call_sid in self._followed:
                    followed_ended.append((event.call_sid, event.ending))
                else:
                    self._end_remote(event.call_sid, event.ending)
        return followed_ended

    def _on_call(self, call_sid: str, entries: Iterable[Entry]) -> None:
        for entry_id, fields in entries:
            last = self._followed.get(call_sid)
            if last is None:
                return  # it ended in this reply, or nobody here watches it any more
            if _id_order(entry_id) <= _id_order(last):
                continue  # read already (a catch-up and a shard's read may overlap)
            self._followed[call_sid] = entry_id
            entry = wire.parse_call_entry(fields)
            if isinstance(entry, wire.Message):
                self.hub.publish(call_sid, entry.text)
            elif isinstance(entry, Ending):
                self._end_remote(call_sid, entry)

    async def _catch_up(self, call_sid: str, ending: Ending) -> None:
        """A followed call ended (the feed says so): deliver the rest of its stream first,
        then end it, with its stream's ending if it has one (else the feed's)."""
        last = self._followed.get(call_sid)
        if last is None:
            return
        entries = await self.reader.xrange(self.keys.call(call_sid), min=f"({last}")
        self._on_call(call_sid, cast(list[Entry], entries))
        if call_sid in self._remote:
            self._end_remote(call_sid, ending)

    def _mirror(self, record: wire.CallRecord) -> None:
        sid = record.info.call_sid
        if record.instance == self.instance or sid in self._remote:
            return
        try:
            self.hub.open_call(sid, record.info, remote=True)
        except DuplicateCall:
            return  # streaming here too (Twilio reconnected it here): the local one wins
        self._remote[sid] = record

    def _end_remote(self, call_sid: str, ending: Ending) -> None:
        self._remote.pop(call_sid, None)
        self._followed.pop(call_sid, None)
        self._idle_since.pop(call_sid, None)
        self._loading.pop(call_sid, None)
        self.hub.end_call(call_sid, ending)

    # Heartbeats, and the calls of instances that are gone.

    async def _heartbeat_forever(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await self._beat()
            except _UNREACHABLE as exc:
                self._lost(exc)
                self.liveness.forgive()  # what we cannot see, we do not judge
                continue
            except Exception:  # a bug: the calls must go on; beat again next time
                logger.exception("the Redis heartbeat failed")
                continue
            self._found()
            self._settle_followed()

    async def _beat(self) -> None:
        """Renew this instance's heartbeat (re-registering its calls if Redis forgot them),
        check the owners of the calls mirrored here, and end the calls of those gone."""
        owners = sorted({record.instance for record in self._remote.values()})
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self.keys.instance(self.instance), "1", px=self.heartbeat_ttl_ms, get=True)
        pipe.set(self.keys.epoch, secrets.token_hex(8), nx=True)
        pipe.get(self.keys.epoch)
        if owners:
            pipe.mget([self.keys.instance(owner) for owner in owners])
        replies = await pipe.execute()
        previous, _, epoch = replies[:3]
        alive = replies[3] if owners else []
        if previous is None and self._own:
            await self._register_again()
        if epoch != self._epoch:  # Redis restarted (or first beat): its keys were lost
            self._check_epoch = bool(self._epoch)  # the publisher may have writes to redo
            self._epoch = epoch
            self.liveness.forgive()
        now = time.monotonic()
        for owner, key in zip(owners, alive, strict=True):
            self.liveness.check(owner, now, key is not None)
        for owner in owners:
            if self.liveness.gone(owner, now):
                await self._reap(owner)

    async def _register_again(self) -> None:
        """Redis lost this instance's keys (a restart): list its calls again."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.hset(self.keys.calls, mapping={sid: r.dumps() for sid, r in self._own.items()})
        for record in self._own.values():
            pipe.xadd(self.keys.feed, _fields(wire.started_entry(record)), maxlen=FEED_MAX)
        await pipe.execute()
        logger.info("registered %d call(s) again after Redis lost them", len(self._own))

    async def _reap(self, owner: str) -> None:
        """End, for the watchers here, the calls of an instance that is gone; the first
        instance to notice also takes them off the registry and tells the feed."""
        sids = [sid for sid, record in self._remote.items() if record.instance == owner]
        logger.warning(
            "instance %s stopped heartbeating: ending its %d call(s) here", owner, len(sids)
        )
        self.liveness.forget(owner)
        for sid in sids:
            self.hub.counters.remote_calls_lost += 1
            self._end_remote(sid, wire.INSTANCE_LOST)
            if await self.redis.hdel(self.keys.calls, sid):
                pipe = self.redis.pipeline(transaction=False)
                pipe.xadd(self.keys.feed, _fields(wire.ended_entry(sid, wire.INSTANCE_LOST)))
                pipe.expire(self.keys.call(sid), self.keep_s)
                await pipe.execute()

    def _settle_followed(self) -> None:
        """Stop reading the calls no watcher here follows any more."""
        now = time.monotonic()
        for sid in list(self._followed):
            if self.hub.watcher_count(sid):
                self._idle_since.pop(sid, None)
            elif now - self._idle_since.setdefault(sid, now) >= SETTLE_S:
                del self._followed[sid]
                del self._idle_since[sid]
                self._loading.pop(sid, None)
                self.hub.replace_history(sid, (), truncated=False)


def _id_order(entry_id: str) -> tuple[int, int]:
    """A stream entry id as numbers, to compare."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _fields(fields: dict[str, str]) -> Fields:
    return fields


def _where(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
