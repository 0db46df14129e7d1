"""Fixtures: a fake Deepgram and a proxy wired to it, both on 127.0.0.1 ephemeral ports, and
the receive mode of every proxy a test starts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from ..redis_server import RedisClusterServer, RedisServer
from .helpers import PROXY_ENV, RunningProxy, running_proxy


@pytest.fixture(autouse=True)
def direct_receive(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """DIRECT_RECEIVE for every proxy the test starts: "true", unless the test is marked
    `helpers.both_receive_modes` (the core path's are), which runs it with each value."""
    value: str = getattr(request, "param", "true")
    monkeypatch.setitem(PROXY_ENV, "DIRECT_RECEIVE", value)
    return value


@pytest.fixture
async def deepgram() -> AsyncIterator[FakeDeepgram]:
    async with FakeDeepgram(result_ms=100, idle_timeout_s=10.0) as fake:
        yield fake


@pytest.fixture
async def proxy(deepgram: FakeDeepgram) -> AsyncIterator[RunningProxy]:
    async with running_proxy(deepgram.url) as running:
        yield running


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real, empty redis-server on 127.0.0.1 (skips without one, fails under CI)."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[RedisClusterServer]:
    """A real Redis Cluster of three masters on 127.0.0.1."""
    cluster = RedisClusterServer(tmp_path)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
