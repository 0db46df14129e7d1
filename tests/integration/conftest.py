"""Fixtures: a fake Deepgram and a proxy wired to it, both on 127.0.0.1 ephemeral ports, and
the receive mode of every proxy a test starts."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from twilio_dg_proxy.fakes.deepgram import FakeDeepgram

from ..postgres_server import PostgresServer
from ..redis_server import RedisClusterServer, RedisServer
from .helpers import PROXY_ENV, RunningProxy, running_proxy


@pytest.fixture(autouse=True)
def direct_receive(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """DIRECT_RECEIVE for every proxy the test starts: "true", unless the test is marked
    `helpers.both_receive_modes` (the core path's are), which runs it with each value."""
    value: str = getattr(request, "param", "true")
    monkeypatch.setitem(PROXY_ENV, "DIRECT_RECEIVE", value)
    return value


@pytest.fixture(autouse=True)
def transcripts_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where every proxy the test starts stores its transcripts: a file of its own."""
    path = tmp_path / "transcripts.sqlite3"
    monkeypatch.setitem(PROXY_ENV, "TRANSCRIPTS_FILE", str(path))
    return path


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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL on 127.0.0.1 shared by the session's tests, each with a database of
    its own (`postgres_url`); skips without one, fails under CI."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a new, empty database."""
    return postgres_server.create_database(f"test_{uuid.uuid4().hex[:12]}")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of the test's own, which it may stop and restart."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_env(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, str]:
    """Settings for each kind of transcript store (the test runs once with each)."""
    if request.param == "sqlite":
        return {"TRANSCRIPTS_FILE": str(tmp_path / "store.sqlite3")}
    url: str = request.getfixturevalue("postgres_url")
    return {"DATABASE_URL": url}
