"""A redis-server of the benchmark's own (`bench --remote-watchers`): started on 127.0.0.1
with persistence off, pinned to the CPUs it is given, sampled (the commands it processed,
from INFO; its CPU is read from /proc by the window, as any process's) and stopped at the
end.

The INFO parsers are pure; `RedisProcess` does the I/O. As in the tests' fixture
(tests/redis_server.py), redis-server cannot pick a free port and report it (`--port 0`
turns TCP off), so a random port is tried and another one when it is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import tempfile
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .processes import BenchError

__all__ = [
    "RedisProcess",
    "RedisSample",
    "command_calls",
    "find_redis_server",
    "info_fields",
    "resp_bulk_string",
]

_READY: Final = b"Ready to accept connections"
_START_ATTEMPTS: Final = 20
_START_TIMEOUT_S: Final = 10.0
_INFO_TIMEOUT_S: Final = 5.0
# INFO with several sections in one round trip (Redis 7): the total and the breakdown are
# then counted at the same instant.
_INFO_REQUEST: Final = b"*3\r\n$4\r\nINFO\r\n$5\r\nstats\r\n$12\r\ncommandstats\r\n"


def find_redis_server() -> str:
    """The redis-server binary on PATH (or Debian's), or raise BenchError saying what to
    install."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not Path(binary).is_file():
        raise BenchError(
            "--remote-watchers needs redis-server (apt-get install redis-server) and the "
            "redis extra (pip install 'twilio-dg-proxy[redis]')"
        )
    return binary


def info_fields(text: str) -> dict[str, str]:
    """The ``name:value`` lines of an INFO reply (section headers and blank lines skipped)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, sep, value = line.partition(":")
            if sep:
                fields[name] = value
    return fields


def command_calls(fields: dict[str, str]) -> dict[str, int]:
    """Calls per command from INFO commandstats' fields (``cmdstat_xadd`` →
    ``calls=12,usec=...``), by lower-case command name (``xadd``, ``config|get``)."""
    calls: dict[str, int] = {}
    for name, value in fields.items():
        if name.startswith("cmdstat_"):
            stats = dict(item.partition("=")[::2] for item in value.split(","))
            calls[name.removeprefix("cmdstat_")] = int(stats["calls"])
    return calls


def resp_bulk_string(reply: bytes) -> bytes | None:
    """The payload of a complete RESP bulk string reply (``$<n>\\r\\n<n bytes>\\r\\n``), or
    None while `reply` is still incomplete. Raises ValueError on any other reply (an
    ``-ERR`` among them)."""
    header, sep, rest = reply.partition(b"\r\n")
    if not sep:
        return None
    if not header.startswith(b"$"):
        raise ValueError(f"not a bulk string reply: {reply[:200]!r}")
    size = int(header[1:])
    if len(rest) < size + 2:
        return None
    return rest[:size]


@dataclass(frozen=True, slots=True)
class RedisSample:
    """The commands redis-server had processed, at monotonic `at`."""

    at: float
    commands: int  # INFO stats' total_commands_processed
    by_command: dict[str, int]  # INFO commandstats' calls, by command


class RedisProcess:
    """One redis-server child on 127.0.0.1; `url` for the proxies' REDIS_URL."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.tail: deque[str] = deque(maxlen=20)

    @property
    def pid(self) -> int:
        """redis-server's process id."""
        return self.process.pid

    @property
    def url(self) -> str:
        """Its address as a REDIS_URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    @classmethod
    @asynccontextmanager
    async def started(cls, cpus: frozenset[int] | None) -> AsyncIterator[RedisProcess]:
        """Start redis-server (persistence off, in a temporary directory), pinned to `cpus`;
        kill it on exit. Raises BenchError if it cannot start."""
        binary = find_redis_server()
        with tempfile.TemporaryDirectory(prefix="bench-redis-") as workdir:
            for _ in range(_START_ATTEMPTS):
                started = await _start(binary, random.randint(20_000, 59_999), Path(workdir))
                if started is not None:
                    break
            else:
                raise BenchError(f"redis-server did not start ({_START_ATTEMPTS} ports tried)")
            redis = cls(*started)
            drain = asyncio.create_task(redis._drain())
            try:
                if cpus is not None:
                    _pin_threads(redis.pid, cpus)
                yield redis
            finally:
                # Nothing in it is worth keeping: a kill is a clean stop here.
                if redis.process.returncode is None:
                    redis.process.kill()
                    await redis.process.wait()
                await drain

    async def _drain(self) -> None:
        # Its log goes to a pipe that must not fill up.
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.tail.append(line.decode(errors="replace"))

    def sample(self) -> RedisSample:
        """Its command counts now (its CPU is the window's to sample, from /proc). Blocking
        (one INFO round trip on loopback): the window's samples are taken synchronously, at
        its two ends only."""
        at = time.monotonic()
        fields = info_fields(self.info())
        return RedisSample(
            at=at,
            commands=int(fields["total_commands_processed"]),
            by_command=command_calls(fields),
        )

    def info(self) -> str:
        """The text of ``INFO stats commandstats``."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=_INFO_TIMEOUT_S) as sock:
            sock.sendall(_INFO_REQUEST)
            reply = b""
            while (payload := resp_bulk_string(reply)) is None:
                chunk = sock.recv(65536)
                if not chunk:
                    raise BenchError("redis-server closed the connection during INFO")
                reply += chunk
        return payload.decode()


async def _start(
    binary: str, port: int, workdir: Path
) -> tuple[asyncio.subprocess.Process, int] | None:
    """redis-server listening on `port`, or None if it exited (the port was taken)."""
    process = await asyncio.create_subprocess_exec(
        binary,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--save", "",  # persistence off: no RDB snapshots ...
        "--appendonly", "no",  # ... and no append-only file
        "--dir", str(workdir),
        "--logfile", "",  # to stdout, where "Ready to accept connections" is read
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert process.stdout is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(_START_TIMEOUT_S):
            while line := await process.stdout.readline():
                seen.append(line)
                if _READY in line:
                    return process, port
    except TimeoutError:
        process.kill()
        await process.wait()
        raise BenchError(
            "redis-server did not get ready:\n" + b"".join(seen[-20:]).decode(errors="replace")
        ) from None
    await process.wait()
    return None


def _pin_threads(pid: int, cpus: frozenset[int]) -> None:
    """Pin every thread of `pid` (redis-server starts its background threads before it is
    ready, so pinning the process alone would leave them free)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that just ended
            os.sched_setaffinity(int(task.name), cpus)
