"""The broker's reading side (`redis_broker`): every other instance's calls mirrored into the
hub (`remote`, from the registry and the call feed), and the calls watchers here follow,
read together (one blocking XREAD on one connection, whatever the number of calls and
watchers; on a Cluster, one per shard) and published into the hub, whose bounded queues fan
out as for a local call."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from typing import Any, cast

from redis.exceptions import RedisError

from . import broker_protocol as wire
from .exceptions import BrokerUnavailable, DuplicateCall
from .hub import Ending, Hub
from .redis_link import RedisLink

Entry = tuple[str, Mapping[str, str]]  # a stream entry as redis-py reads it: (id, fields)
# redis-py's hints cover bytes and str at once; with decode_responses every reply is str.
Fields = dict[Any, Any]

READ_COUNT = 1000  # entries per stream per XREAD
SETTLE_S = 1.0  # a followed call with no watcher left is dropped from the reads after this


class Follower:
    """Mirrors the calls of the instances other than `instance`, and follows those watched
    here (`prepare`, then `run` per group of streams)."""

    def __init__(self, link: RedisLink, keys: wire.Keys, hub: Hub, *, instance: str) -> None:
        self.link = link
        self.keys = keys
        self.hub = hub
        self.instance = instance
        self.remote: dict[str, wire.CallRecord] = {}  # calls mirrored from elsewhere
        self._followed: dict[str, str] = {}  # remote callSid → last entry id read
        self._idle_since: dict[str, float] = {}
        self._loading: dict[str, asyncio.Lock] = {}
        self._feed_last = "0-0"
        self._shard_wake = [asyncio.Event() for _ in range(wire.SHARDS)]

    @property
    def following(self) -> int:
        """How many remote calls are read for watchers here."""
        return len(self._followed)

    async def mirror_registry(self) -> None:
        """Mirror the calls the registry lists now, and read the feed from here on."""
        redis = self.link.redis
        latest = await redis.xrevrange(self.keys.feed, count=1)
        records = await redis.hgetall(self.keys.calls)
        self._feed_last = str(latest[0][0]) if latest else "0-0"
        for raw in map(str, records.values()):
            record = wire.load_record(raw)
            if record is not None:
                self._mirror(record)

    def groups(self) -> list[int | None]:
        """The reads: None reads the call feed (and on one Redis every followed call); on
        a Cluster, shard k's followed calls get a read of their own."""
        return [None, *range(wire.SHARDS)] if self.link.cluster else [None]

    def wake_all(self) -> None:
        """Let every read waiting for a call to follow see that the broker stops."""
        for wake in self._shard_wake:
            wake.set()

    # Following a call.

    async def prepare(self, call_sid: str) -> None:
        """Before a watcher here joins `call_sid`: if another instance streams it, load its
        history from Redis into the hub and follow its stream. Raises BrokerUnavailable."""
        if call_sid not in self.remote:
            return
        self._idle_since.pop(call_sid, None)
        lock = self._loading.setdefault(call_sid, asyncio.Lock())
        async with lock:
            if call_sid in self.remote and call_sid not in self._followed:
                await self._load(call_sid)

    async def _load(self, call_sid: str) -> None:
        try:
            entries = await self.link.redis.xrange(self.keys.call(call_sid))
        except (RedisError, OSError) as exc:
            self.link.lost(exc)
            raise BrokerUnavailable(f"Redis unreachable: cannot follow {call_sid}") from None
        if call_sid not in self.remote:
            return  # it ended meanwhile
        replay = wire.replay(cast(list[Entry], entries))
        self.hub.replace_history(call_sid, replay.messages, replay.truncated)
        if replay.ending is not None:
            self.end_remote(call_sid, replay.ending)
        else:
            self._followed[call_sid] = replay.last_id
            self._shard_wake[wire.shard_of(call_sid)].set()

    def settle(self) -> None:
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

    # Reading.

    async def run(self, group: int | None) -> None:
        """Read one group of streams (`groups`) and apply what comes, until the broker
        stops."""
        await self.link.keep_at(lambda _: self._read(group), "reading from Redis")

    async def _read(self, group: int | None) -> bool:
        streams, sids = self._streams_of(group)
        if not streams:  # a shard none of whose calls is followed here
            wake = self._shard_wake[group or 0]
            wake.clear()
            await wake.wait()
            return False
        reply = await self.link.reader.xread(streams, count=READ_COUNT, block=self.link.block_ms)
        for sid, ending in self._dispatch(reply or [], sids):
            await self._catch_up(sid, ending)
        return True

    def _streams_of(self, group: int | None) -> tuple[Fields, dict[str, str]]:
        """The streams of `group` with the id to read after, and callSid by stream key."""
        streams: Fields = {self.keys.feed: self._feed_last} if group is None else {}
        if group is None and self.link.cluster:
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
            elif event.call_sid in self.remote:
                assert event.ending is not None
                if event.call_sid in self._followed:
                    followed_ended.append((event.call_sid, event.ending))
                else:
                    self.end_remote(event.call_sid, event.ending)
        return followed_ended

    def _on_call(self, call_sid: str, entries: Iterable[Entry]) -> None:
        for entry_id, fields in entries:
            last = self._followed.get(call_sid)
            if last is None:
                return  # it ended in this reply, or nobody here watches it any more
            if wire.id_order(entry_id) <= wire.id_order(last):
                continue  # read already (a catch-up and a shard's read may overlap)
            self._followed[call_sid] = entry_id
            entry = wire.parse_call_entry(fields)
            if isinstance(entry, wire.Message):
                self.hub.publish(call_sid, entry.text)
            elif isinstance(entry, Ending):
                self.end_remote(call_sid, entry)

    async def _catch_up(self, call_sid: str, ending: Ending) -> None:
        """A followed call ended (the feed says so): deliver the rest of its stream first,
        then end it, with its stream's ending if it has one (else the feed's)."""
        last = self._followed.get(call_sid)
        if last is None:
            return
        entries = await self.link.reader.xrange(self.keys.call(call_sid), min=f"({last}")
        self._on_call(call_sid, cast(list[Entry], entries))
        if call_sid in self.remote:
            self.end_remote(call_sid, ending)

    # The remote calls in the hub.

    def _mirror(self, record: wire.CallRecord) -> None:
        sid = record.info.call_sid
        if record.instance == self.instance or sid in self.remote:
            return
        try:
            self.hub.open_call(sid, record.info, remote=True)
        except DuplicateCall:
            return  # streaming here too (Twilio reconnected it here): the local one wins
        self.remote[sid] = record

    def end_remote(self, call_sid: str, ending: Ending) -> None:
        """End a remote call for the watchers here, and forget it."""
        self.remote.pop(call_sid, None)
        self._followed.pop(call_sid, None)
        self._idle_since.pop(call_sid, None)
        self._loading.pop(call_sid, None)
        self.hub.end_call(call_sid, ending)
