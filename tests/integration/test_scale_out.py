"""Scale-out through a real Redis: two proxies (instances A and B) share one redis-server on
127.0.0.1; a call streams through A, watchers join on A and on B, and each must get exactly
what Deepgram said, in order, then `close` (docs/scaling-out.md)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Protocol

import pytest
from redis import Redis
from websockets.asyncio.client import connect

from twilio_dg_proxy.broker_protocol import (
    INSTANCE_LOST,
    FeedEvent,
    Keys,
    load_record,
    parse_feed_entry,
)
from twilio_dg_proxy.fakes.deepgram import FakeDeepgram
from twilio_dg_proxy.twilio_events import Track
from twilio_dg_proxy.twilio_simulator import SimulatedCall, pattern

from ..redis_server import RedisServer
from ..timing import S
from .helpers import RunningProxy, ServerProcess, TwilioPeer, Watcher, running_proxy, until
from .test_readiness import readyz
from .test_websocat import printed, websocat_choosing

SECOND = 8000  # mu-law bytes per second per track
KEYS = Keys("tdp")  # the default REDIS_KEY_PREFIX


def tracks(seconds: float, offset: int = 0) -> dict[Track, bytes]:
    n = int(seconds * SECOND)
    return {
        "inbound": pattern("inbound", n, offset=offset),
        "outbound": pattern("outbound", n, offset=offset),
    }


class Shared(Protocol):
    """A Redis the instances share: one server, or a Cluster."""

    @property
    def url(self) -> str: ...


@pytest.fixture(params=["one Redis", "Redis Cluster"])
def any_redis(request: pytest.FixtureRequest) -> Shared:
    """The tests that take it run against one redis-server, then a three-node Cluster."""
    name = "redis_server" if request.param == "one Redis" else "redis_cluster"
    shared: Shared = request.getfixturevalue(name)
    return shared


@contextlib.asynccontextmanager
async def instances(
    deepgram: FakeDeepgram, redis: Shared, count: int = 2, **env: str
) -> AsyncIterator[list[RunningProxy]]:
    """`count` proxies sharing `redis` (heartbeat timeout 1 s, so that tests of a vanished
    instance end quickly)."""
    env = {"REDIS_URL": redis.url, "REDIS_HEARTBEAT_TIMEOUT_S": "1"} | env
    async with contextlib.AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(running_proxy(deepgram.url, **env))
            for _ in range(count)
        ]


def last_feed_event(redis: RedisServer) -> FeedEvent | None:
    """The newest entry of the call feed, read straight from Redis."""
    with Redis.from_url(redis.url, decode_responses=True) as client:
        ((_, fields),) = client.xrevrange(KEYS.feed, count=1)
    return parse_feed_entry(fields)


async def visible(proxy: RunningProxy, call_sid: str) -> None:
    """Wait until `proxy` lists the call (its instance learnt of it through Redis)."""
    await until(lambda: call_sid in proxy.server.hub.active_calls())


@dataclass(frozen=True)
class SharedCall:
    """A call streaming through instance `a`, listed on instance `b` through Redis."""

    call: SimulatedCall
    a: RunningProxy
    b: RunningProxy
    twilio: TwilioPeer

    @property
    def sid(self) -> str:
        return self.call.call_sid

    async def watchers(self) -> tuple[Watcher, Watcher]:
        """A watcher of the call on its own instance, and one on the other."""
        return await Watcher.join(self.a, self.sid), await Watcher.join(self.b, self.sid)


@contextlib.asynccontextmanager
async def shared_call(
    deepgram: FakeDeepgram, redis: Shared, **env: str
) -> AsyncIterator[SharedCall]:
    """Two instances sharing `redis` (`instances`), and a call started on the first and
    listed on the second."""
    call = SimulatedCall()
    async with instances(deepgram, redis, 2, **env) as (a, b):
        async with TwilioPeer.started(a, call) as twilio:
            await visible(b, call.call_sid)
            yield SharedCall(call, a, b, twilio)


async def test_watchers_on_another_instance_get_the_same_messages_in_order(
    deepgram: FakeDeepgram, any_redis: Shared
) -> None:
    async with shared_call(deepgram, any_redis) as shared:
        local, remote = await shared.watchers()
        watchers = [local, remote, await Watcher.join(shared.b, shared.sid)]
        assert all(w.listed == [shared.sid] for w in watchers)
        await shared.twilio.send_all(shared.call.frames(tracks(1.0)))
        await shared.twilio.stop()
        seen = await asyncio.gather(*(w.transcript() for w in watchers))
        (stream,) = deepgram.streams
        assert seen[0] == stream.sent
        assert seen[1] == seen[0] and seen[2] == seen[0]
        b = shared.b
        await until(lambda: not b.server.hub.active_calls())
        health = b.server.health()
        assert health["calls"] == 0 and health["local_calls"] == 0


async def test_a_late_viewer_on_another_instance_gets_history_then_live_without_seam(
    deepgram: FakeDeepgram, any_redis: Shared
) -> None:
    async with shared_call(deepgram, any_redis) as shared:
        frames = shared.call.frames(tracks(2.0))
        half = len(frames) // 2
        a, twilio = shared.a, shared.twilio
        local = await Watcher.join(a, shared.sid)
        await twilio.send_all(frames[:half])
        # Finals of the first half have reached Redis before the viewer on B joins.
        await until(lambda: len(a.server.hub._calls[shared.sid].history.messages) >= 2)
        async with connect(f"ws://127.0.0.1:{shared.b.port}/viewer/ws", proxy=None) as viewer:
            listed = json.loads(await viewer.recv())
            assert [c["callSid"] for c in listed["calls"]] == [shared.sid]
            await viewer.send(json.dumps({"type": "subscribe", "callSid": shared.sid}))
            subscribed = json.loads(await viewer.recv())
            assert subscribed["type"] == "subscribed"
            await twilio.send_all(frames[half:])
            await twilio.stop()
            live = []
            async for text in viewer:
                message = json.loads(text)
                if message["type"] == "call_ended":
                    break
                live.append(message["message"])
        sent = await local.transcript()
    finals = [m for m in map(json.loads, sent) if _is_final(m)]
    replayed = subscribed["history"]
    assert replayed and replayed == finals[: len(replayed)]
    # Then every final after the last one replayed: none missing, none twice.
    live_finals = [m for m in live if _is_final(m)]
    assert replayed + live_finals == finals


def _is_final(message: dict[str, Any]) -> bool:
    return bool(
        message.get("type") == "Results"
        and message.get("is_final")
        and (message["channel"]["alternatives"][0]["transcript"] or message.get("speech_final"))
    )


async def test_without_redis_at_start_the_proxy_refuses_to_start_clearly(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    from twilio_dg_proxy.exceptions import BrokerUnavailable

    url = redis_server.url
    redis_server.stop()
    with pytest.raises(BrokerUnavailable, match=r"cannot reach Redis at redis://127\.0\.0\.1"):
        async with running_proxy(deepgram.url, REDIS_URL=url):
            pass


async def test_websocat_on_another_instance_prints_what_deepgram_sent_then_close(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with shared_call(deepgram, redis_server) as shared:
        b = shared.b
        process = await websocat_choosing(b.client_url, shared.sid)
        await until(lambda: b.server.hub.subscriber_count() == 1)
        await shared.twilio.send_all(shared.call.frames(tracks(1.0)))
        await shared.twilio.stop()
        lines = await printed(process)
    assert json.loads(lines[0]) == [shared.sid]
    assert lines[1:-1] == deepgram.streams[0].sent
    assert lines[-1] == "close"


async def test_a_redis_restart_mid_call_loses_nothing_for_watchers_anywhere(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with shared_call(deepgram, redis_server) as shared:
        a, twilio = shared.a, shared.twilio
        frames = shared.call.frames(tracks(3.0))
        third = len(frames) // 3
        local, remote = await shared.watchers()
        await twilio.send_all(frames[:third])
        redis_server.stop()
        # Redis is away: the call goes on, and so do its watchers on A.
        await twilio.send_all(frames[third : 2 * third])
        await until(lambda: a.server.hub.counters.redis_errors > 0)
        redis_server.start()  # empty, on the same port
        await twilio.send_all(frames[2 * third :])
        await twilio.stop()
        seen = await asyncio.gather(local.transcript(), remote.transcript(within=20 * S))
    (stream,) = deepgram.streams
    assert seen[0] == stream.sent
    assert seen[1] == stream.sent
    assert a.server.hub.counters.redis_dropped == 0


async def test_after_a_redis_restart_an_instance_lists_its_calls_again(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    # No audio, so nothing is written across the restart: only the heartbeat's
    # re-registration (not the publisher's rewrite of its recent writes) lists the call again.
    call = SimulatedCall()
    sid = call.call_sid
    async with instances(deepgram, redis_server, count=1) as (a,):
        async with TwilioPeer.started(a, call) as twilio:
            await until(lambda: redis_server.cli("HEXISTS", KEYS.calls, sid) == "1")
            redis_server.restart()  # empty, on the same port
            await until(lambda: redis_server.cli("HEXISTS", KEYS.calls, sid) == "1")
            record = load_record(redis_server.cli("HGET", KEYS.calls, sid))
            assert a.server.broker is not None
            assert record is not None and record.instance == a.server.broker.instance
            assert record.info.call_sid == sid
            # An instance started now learns of the call from Redis alone, and follows it.
            async with instances(deepgram, redis_server, count=1) as (c,):
                await visible(c, sid)
                watcher = await Watcher.join(c, sid)
                assert watcher.listed == [sid]
                await twilio.stop()
                assert await watcher.transcript() == deepgram.streams[0].sent


async def test_beyond_its_buffer_what_redis_missed_is_dropped_and_counted_not_held(
    deepgram: FakeDeepgram, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    call = SimulatedCall()
    async with instances(deepgram, redis_server, count=1, REDIS_PUBLISH_BUFFER="100") as (a,):
        async with TwilioPeer.started(a, call) as twilio:
            local = await Watcher.join(a, call.call_sid)
            redis_server.stop()
            await twilio.send_all(call.frames(tracks(8.0)))
            await twilio.stop()
            seen = await local.transcript()
        (stream,) = deepgram.streams
        assert seen == stream.sent  # watchers on the call's own instance miss nothing
        counters = a.server.hub.counters
        # At most 100 messages wait (the call's `end` waits beyond them); the rest were
        # dropped and counted, none lost without a count.
        assert a.server.broker is not None
        waiting = len(a.server.broker.queue)
        assert waiting <= 100 + 1
        assert counters.redis_dropped >= len(stream.sent) - 100 > 0
    assert "Redis write queue full (100)" in caplog.text


async def test_when_the_instance_streaming_a_call_is_killed_its_watchers_elsewhere_are_told(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    call = SimulatedCall()
    env = {
        "DEEPGRAM_URL": deepgram.url,
        "REDIS_URL": redis_server.url,
        "REDIS_HEARTBEAT_TIMEOUT_S": "1",
    }
    async with instances(deepgram, redis_server, count=1) as (b,):
        async with ServerProcess.started("serve", "--port", "0", **env) as a:
            async with connect(f"ws://127.0.0.1:{a.port}/twilio", proxy=None) as twilio:
                await twilio.send(call.connected())
                await twilio.send(call.start())
                await visible(b, call.call_sid)
                watchers = [await Watcher.join(b, call.call_sid) for _ in range(2)]
                for _, text in call.frames(tracks(0.5)):
                    await twilio.send(text)
                a.process.kill()  # SIGKILL: no goodbye, its heartbeat just stops
                for watcher in watchers:
                    code, reason, _ = await watcher.closed(within=10 * S)
                    assert (code, reason) == (1011, "the instance streaming this call stopped")
        await until(lambda: not b.server.hub.active_calls())
        assert b.server.hub.counters.remote_calls_lost == 1
        # B, the first to notice, tells the feed the call ended (after A's `started`) and
        # lets the call's stream expire.
        await until(lambda: redis_server.cli("XLEN", KEYS.feed) == "2")
        assert last_feed_event(redis_server) == FeedEvent(
            "ended", call.call_sid, ending=INSTANCE_LOST
        )
        assert int(redis_server.cli("PTTL", KEYS.call(call.call_sid))) > 0
    assert redis_server.cli("HLEN", KEYS.calls) == "0"


async def test_watchers_coming_and_going_across_instances_leave_nothing_behind(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with shared_call(deepgram, redis_server) as shared:
        b, sid = shared.b, shared.sid
        await shared.twilio.send_all(shared.call.frames(tracks(0.5)))
        await until(lambda: redis_server.cli("XLEN", KEYS.call(sid)) != "0")
        keys = redis_server.cli("DBSIZE")
        assert b.server.broker is not None
        follower = b.server.broker.follower
        objects = []
        for cycle in range(1000):
            async with connect(b.client_url, proxy=None) as ws:
                await ws.recv()
                await ws.send(sid)
                await until(lambda: b.server.hub.watcher_count(sid) == 1)
            if cycle in (199, 999):  # after a warm-up, and at the end
                await until(lambda: b.server.hub.watcher_count(sid) == 0)
                gc.collect()
                objects.append(len(gc.get_objects()))
        # No object left behind per watcher (one each would be 800 more).
        assert objects[1] - objects[0] < 400, objects
        assert redis_server.cli("DBSIZE") == keys
        # Nobody watches it on B any more: B stops reading it (after SETTLE_S).
        await until(lambda: not follower._followed, within=5 * S)
        assert not follower._loading and not follower._idle_since
        assert b.server.hub.counters.subscriptions == 1000
        await shared.twilio.stop()


async def test_a_watcher_of_another_instances_call_is_told_to_retry_while_redis_is_away(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with shared_call(deepgram, redis_server) as shared:
        sid = shared.sid
        redis_server.stop()
        async with connect(shared.b.client_url, proxy=None) as ws:
            assert json.loads(await ws.recv()) == [sid]
            await ws.send(sid)
            refusal = await ws.recv()
            await ws.wait_closed()
        assert refusal == f"error: Redis unreachable: cannot follow {sid}"
        assert (ws.close_code, ws.close_reason) == (1013, refusal.removeprefix("error: "))
        # The call itself, and a watcher on its own instance, carry on.
        local = await Watcher.join(shared.a, sid)
        await shared.twilio.send_all(shared.call.frames(tracks(0.5)))
        await shared.twilio.stop()
        assert await local.transcript() == deepgram.streams[0].sent


async def test_an_instance_is_not_ready_while_redis_is_away_and_ready_again_after(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    async with instances(deepgram, redis_server, count=1) as (a,):
        assert (await asyncio.to_thread(readyz, a.port))[0] == 200
        redis_server.stop()
        await until(lambda: a.server.broker is not None and not a.server.broker.reachable)
        status, body = await asyncio.to_thread(readyz, a.port)
        assert status == 503 and "Redis" in json.dumps(body), body
        redis_server.start()
        await until(lambda: a.server.broker is not None and a.server.broker.reachable, 10 * S)
        assert (await asyncio.to_thread(readyz, a.port))[0] == 200


async def test_redis_refusing_writes_mid_call_stops_nothing_and_loses_nothing(
    deepgram: FakeDeepgram, redis_server: RedisServer
) -> None:
    # A long heartbeat timeout: this test is about refused writes, not vanished instances.
    async with shared_call(deepgram, redis_server, REDIS_HEARTBEAT_TIMEOUT_S="30") as shared:
        a, twilio = shared.a, shared.twilio
        frames = shared.call.frames(tracks(3.0))
        third = len(frames) // 3
        local, remote = await shared.watchers()
        await twilio.send_all(frames[:third])
        redis_server.cli("CONFIG", "SET", "maxmemory", "1")  # every write: OOM
        errors = a.server.hub.counters.redis_errors
        await twilio.send_all(frames[third : 2 * third])
        await until(lambda: a.server.hub.counters.redis_errors > errors)
        redis_server.cli("CONFIG", "SET", "maxmemory", "0")
        await twilio.send_all(frames[2 * third :])
        await twilio.stop()
        seen = await asyncio.gather(local.transcript(), remote.transcript(within=20 * S))
    (stream,) = deepgram.streams
    assert seen[0] == stream.sent
    assert seen[1] == stream.sent  # the refused writes were made again, in order
