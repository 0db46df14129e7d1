"""The broker's link to Redis (`redis_broker`): its clients (one Redis, or a Redis Cluster),
whether Redis is reachable now, and the loop its publisher and readers run, which waits
while Redis is away and never lets a failure end the calls."""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Awaitable, Callable, Sized
from typing import Any
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
    TryAgainError,
)

from . import broker_protocol as wire
from .backoff import Backoff
from .hub import HubCounters
from .logs import get_logger

logger = get_logger("broker")

# One Redis or a Redis Cluster: the same commands, routed by key for a Cluster.
Client = Redis | RedisCluster

# Redis could not do what was asked: retry later, in order. Any error reply counts (a
# replica promoted, memory full, a permission removed), not only a lost connection: a loop
# that let one escape would end the broker, and the calls with it.
UNREACHABLE = (
    RedisError,
    OSError,
    RedisClusterException,  # a Cluster client that cannot find its nodes (not a RedisError)
)
# Replies to one write that a later attempt may not get: the whole batch is tried again.
# Other error replies are about that write alone (e.g. a key of the wrong type): dropped.
TRANSIENT_REPLIES = (
    ReadOnlyError,
    OutOfMemoryError,
    BusyLoadingError,
    TryAgainError,
    MasterDownError,
    ClusterDownError,
    NoPermissionError,
)
_RETRY = Backoff(0.1, 2.0)

# One attempt of a loop (`RedisLink.keep_at`), told how many attempts before it failed in a
# row; False when it only waited for work.
Step = Callable[[int], Awaitable[bool]]


class RedisLink:
    """The clients to REDIS_URL (`connect` them first) and what the broker knows of Redis.
    `waiting`: the writes waiting for Redis, which the log of an outage counts."""

    def __init__(
        self, url: str, *, instance: str, counters: HubCounters, waiting: Sized, block_ms: int
    ) -> None:
        self.url = url
        self.where = _where(url)
        self.counters = counters
        self.waiting = waiting
        self.block_ms = block_ms
        self.options: dict[str, Any] = {
            "decode_responses": True,
            "socket_connect_timeout": 2.0,
            "retry": None,  # the broker retries itself, in order, with its own backoff
            "client_name": f"twilio-dg-proxy:{instance}",
        }
        # Set by `connect`: for writes, and for the blocking reads (on one Redis, a
        # connection of their own, so writes never wait behind them).
        self.redis: Client = Redis.from_url(url, socket_timeout=5.0, **self.options)
        self.reader: Client = self.redis
        self.cluster = False
        self.reachable = True
        self.stopping = False  # every loop ends at its next turn

    async def connect(self) -> None:
        """Find out whether REDIS_URL is one Redis or a node of a Redis Cluster, and connect
        the clients for it."""
        info = await self.redis.info("cluster")
        read_timeout_s = 5.0 + self.block_ms / 1000
        if info.get("cluster_enabled"):
            await self.redis.aclose()
            self.cluster = True
            # Blocking reads take connections of their own from each node's pool.
            self.redis = self.reader = RedisCluster.from_url(
                self.url, socket_timeout=read_timeout_s, **self.options
            )
            await self.redis.initialize()
        else:
            self.reader = Redis.from_url(
                self.url,
                socket_timeout=read_timeout_s,
                single_connection_client=True,
                **self.options,
            )

    async def aclose(self) -> None:
        if self.reader is not self.redis:
            await self.reader.aclose()
        await self.redis.aclose()

    def lost(self, exc: BaseException) -> None:
        """Redis failed a command: count it, and say so once per outage."""
        self.counters.redis_errors += 1
        if self.reachable:
            self.reachable = False
            logger.warning(
                "Redis at %s unreachable (%s): calls go on; %d write(s) wait for it",
                self.where,
                type(exc).__name__,
                len(self.waiting),
            )

    def found(self) -> None:
        """Redis did what was asked."""
        if not self.reachable:
            self.reachable = True
            logger.info("Redis at %s reachable again", self.where)

    async def keep_at(self, step: Step, what: str) -> None:
        """Run `step` until the broker stops. Redis failing it: note that Redis is away,
        wait, and try again; a bug (logged as `what` failed): the same, for the calls must
        go on."""
        failures = 0
        while not self.stopping:
            try:
                if not await step(failures):
                    continue
            except UNREACHABLE as exc:
                self.lost(exc)
            except Exception:
                logger.exception("%s failed", what)
            else:
                failures = 0
                self.found()
                continue
            failures += 1
            await asyncio.sleep(_RETRY.delay(failures, random.random()))


def ask_epoch(pipe: Any, keys: wire.Keys) -> None:
    """Queue the two commands that read Redis' epoch (made on first use): the second
    reply is it."""
    pipe.set(keys.epoch, secrets.token_hex(8), nx=True)
    pipe.get(keys.epoch)


def _where(url: str) -> str:
    """The URL without credentials, for logs."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return f"unix://{parts.path}"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}{parts.path}"
