"""The broker's liveness side (`redis_broker`): this instance's heartbeat, Redis' epoch (new
when Redis has lost its keys), and the calls of instances that are gone, ended for the
watchers here. When an instance is gone is `broker_protocol.Liveness`'s policy."""

from __future__ import annotations

import asyncio
import time

from . import broker_protocol as wire
from .logs import get_logger
from .redis_follower import Follower
from .redis_link import UNREACHABLE, RedisLink, ask_epoch
from .redis_publisher import Publisher, unlist_call

logger = get_logger("broker")


class Heartbeat:
    """Beats for `publisher`'s instance every `timing.every_s` (`run`), and judges the
    owners of `follower`'s remote calls."""

    def __init__(
        self, link: RedisLink, publisher: Publisher, follower: Follower, timing: wire.Heartbeats
    ) -> None:
        self.link = link
        self.keys = publisher.keys
        self.publisher = publisher
        self.follower = follower
        self.timing = timing
        self.liveness = wire.Liveness(grace_s=timing.grace_s)
        self.epoch = ""  # as the last beat saw it

    async def run(self) -> None:
        """Beat until the broker stops; after each beat, drop the calls no watcher here
        follows any more."""
        while not self.link.stopping:
            await asyncio.sleep(self.timing.every_s)
            try:
                await self.beat()
            except UNREACHABLE as exc:
                self.link.lost(exc)
                self.liveness.forgive()  # what we cannot see, we do not judge
                continue
            except Exception:  # a bug: the calls must go on; beat again next time
                logger.exception("the Redis heartbeat failed")
                continue
            self.link.found()
            self.follower.settle()

    async def beat(self) -> None:
        """Renew this instance's heartbeat (re-registering its calls if Redis forgot them),
        check the owners of the calls mirrored here, and end the calls of those gone."""
        owners = sorted({record.instance for record in self.follower.remote.values()})
        pipe = self.link.redis.pipeline(transaction=False)
        own_key = self.keys.instance(self.publisher.instance)
        pipe.set(own_key, "1", px=self.timing.ttl_ms, get=True)
        ask_epoch(pipe, self.keys)
        if owners:
            pipe.mget([self.keys.instance(owner) for owner in owners])
        replies = await pipe.execute()
        previous, _, epoch = replies[:3]
        alive = replies[3] if owners else []
        if previous is None and self.publisher.own:
            await self.publisher.register_again()
        if epoch != self.epoch:  # Redis restarted (or first beat): its keys were lost
            self.publisher.check_epoch = bool(self.epoch)  # it may have writes to redo
            self.epoch = epoch
            self.liveness.forgive()
        now = time.monotonic()
        for owner, key in zip(owners, alive, strict=True):
            self.liveness.check(owner, now, key is not None)
        for owner in owners:
            if self.liveness.gone(owner, now):
                await self._reap(owner)

    async def _reap(self, owner: str) -> None:
        """End, for the watchers here, the calls of an instance that is gone; the first
        instance to notice also takes them off the registry and tells the feed."""
        remote = self.follower.remote
        sids = [sid for sid, record in remote.items() if record.instance == owner]
        logger.warning(
            "instance %s stopped heartbeating: ending its %d call(s) here", owner, len(sids)
        )
        self.liveness.forget(owner)
        for sid in sids:
            self.link.counters.remote_calls_lost += 1
            self.follower.end_remote(sid, wire.INSTANCE_LOST)
            if await self.link.redis.hdel(self.keys.calls, sid):
                pipe = self.link.redis.pipeline(transaction=False)
                unlist_call(pipe, self.keys, sid, wire.INSTANCE_LOST, self.publisher.keep_s)
                await pipe.execute()
