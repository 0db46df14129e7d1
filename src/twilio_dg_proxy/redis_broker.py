"""The Redis broker (REDIS_URL): every instance shares one view of all calls.

An instance publishes the calls it streams (`redis_publisher`, the hub's `CallSink`): a
call's record in the registry, each Deepgram message once to the call's stream, its end. It
mirrors every other instance's calls into its own hub (`redis_follower`), so its clients
list and choose them as if they were local, and reads the streams of those its own watchers
follow. It beats, and ends for its watchers the calls of instances that are gone
(`redis_heartbeat`). `redis_link` holds the clients and whether Redis is reachable.

Redis away: calls and their local watchers go on; writes wait in order in a bounded queue
(`broker_protocol.PublishQueue`) and go out when it is back. What is said on the wire, and
the policies, are in `broker_protocol`; docs/scaling-out.md has the picture.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from redis.exceptions import RedisError

from . import broker_protocol as wire
from .config import Settings
from .exceptions import BrokerUnavailable
from .hub import Hub
from .logs import get_logger
from .redis_follower import Follower
from .redis_heartbeat import Heartbeat
from .redis_link import UNREACHABLE, RedisLink
from .redis_publisher import Publisher

logger = get_logger("broker")


class RedisBroker:
    """Connects a `Hub` to the other instances through Redis (use `RedisBroker.running`)."""

    def __init__(
        self, hub: Hub, settings: Settings, *, instance: str = "", block_ms: int = 100
    ) -> None:
        self.hub = hub
        self.instance = instance or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.queue = wire.PublishQueue(settings.redis_publish_buffer)
        self.link = RedisLink(
            settings.redis_url,
            instance=self.instance,
            counters=hub.counters,
            waiting=self.queue,
            block_ms=block_ms,
        )
        self.keys = keys = wire.Keys(settings.redis_key_prefix)
        self.publisher = Publisher(
            self.link,
            keys,
            self.queue,
            instance=self.instance,
            stream_max=settings.redis_stream_max_messages,
            keep_s=settings.redis_stream_keep_s,
        )
        self.follower = Follower(self.link, keys, hub, instance=self.instance)
        timing = wire.Heartbeats.within(settings.redis_heartbeat_timeout_s)
        self.heartbeat = Heartbeat(self.link, self.publisher, self.follower, timing)

    @classmethod
    @asynccontextmanager
    async def running(cls, hub: Hub, settings: Settings) -> AsyncIterator[RedisBroker]:
        """Connect (raises BrokerUnavailable if Redis cannot be reached), mirror the calls
        already active, then publish and read until the block exits; at exit, write what
        is queued (for a few seconds at most) and say this instance is leaving."""
        broker = cls(hub, settings)
        try:
            await broker._join()
            hub.sinks.append(broker.publisher)
            async with asyncio.TaskGroup() as tasks:
                jobs = [
                    tasks.create_task(broker.publisher.run()),
                    tasks.create_task(broker.heartbeat.run()),
                ]
                groups = broker.follower.groups()
                readers = [tasks.create_task(broker.follower.run(g)) for g in groups]
                try:
                    yield broker
                finally:
                    await broker.publisher.flush(within_s=3.0)
                    await broker._stop_reading(readers)
                    for job in jobs:
                        job.cancel()
            await broker._leave()
        finally:
            if broker.publisher in hub.sinks:
                hub.sinks.remove(broker.publisher)
            await broker.link.aclose()

    @property
    def reachable(self) -> bool:
        """Whether Redis did what was last asked of it."""
        return self.link.reachable

    async def prepare(self, call_sid: str) -> None:
        """Before a watcher here joins `call_sid`: if another instance streams it, load its
        history from Redis into the hub and follow its stream. Raises BrokerUnavailable."""
        await self.follower.prepare(call_sid)

    def health(self) -> dict[str, object]:
        return {
            "instance": self.instance,
            "reachable": self.reachable,
            "queued": len(self.queue),
            "following": self.follower.following,
        }

    async def _join(self) -> None:
        try:
            await self.link.connect()
            await self.follower.mirror_registry()
            await self.heartbeat.beat()
            self.publisher.written_epoch = self.heartbeat.epoch
        except UNREACHABLE as exc:
            where = self.link.where
            raise BrokerUnavailable(f"cannot reach Redis at {where}: {exc}") from None
        logger.info(
            "sharing calls through Redis at %s as instance %s (%d call(s) elsewhere)",
            self.link.where,
            self.instance,
            len(self.follower.remote),
        )

    async def _stop_reading(self, readers: list[asyncio.Task[None]]) -> None:
        """Stop every loop: let the readers finish their reads, then cancel what is left.
        (redis-py may swallow a cancellation that lands inside a command, stuck in a Cluster
        client's read, or in a reconnect: so each loop also checks `link.stopping`.)"""
        self.link.stopping = True  # every loop ends at its next turn
        self.publisher.wake.set()
        self.follower.wake_all()
        await asyncio.wait(readers, timeout=self.link.block_ms / 1000 + 2.0)
        for reader in readers:
            reader.cancel()

    async def _leave(self) -> None:
        try:
            await self.link.redis.delete(self.keys.instance(self.instance))
        except (RedisError, OSError):
            pass  # its heartbeat expires on its own
