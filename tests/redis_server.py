"""A real redis-server (Debian's package) for the scale-out tests: started on a free port on
127.0.0.1 with persistence off, restartable on the same port, and stopped at the end.

redis-server cannot be told to pick a free port and report it (`--port 0` turns TCP off), so
a port is chosen at random and the start is retried when another process holds it."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
_READY = b"Ready to accept connections"


def require_redis_server() -> str:
    """The redis-server binary; skips the test without it (fails under CI, which installs
    it: `.ci/run`)."""
    if Path(REDIS_SERVER).is_file():
        return REDIS_SERVER
    message = (
        f"the scale-out tests need a real Redis at {REDIS_SERVER}: apt-get install redis-server"
    )
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


class RedisServer:
    """One redis-server process on 127.0.0.1; `url` stays valid across `restart()`."""

    def __init__(self, workdir: Path, *options: str) -> None:
        self.binary = require_redis_server()
        self.workdir = workdir
        self.options = options  # more redis-server options
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start on the current port, or on a free random one the first time."""
        for _ in range(20):
            port = self.port or random.randint(20_000, 59_999)
            if self._try_start(port):
                self.port = port
                return
            if self.port:  # a restart must keep its port: wait for the old socket to go
                time.sleep(0.1)
        raise RuntimeError("redis-server did not start (20 attempts)")

    def _try_start(self, port: int) -> bool:
        process = subprocess.Popen(
            [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(self.workdir),
                "--logfile", "",
                *self.options,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        assert process.stdout is not None
        output = b""
        while process.poll() is None:
            line = process.stdout.readline()
            output += line
            if _READY in line:
                self.process = process
                return True
        process.stdout.close()
        process.wait()
        return False  # exited: the port was taken (or another start error)

    def stop(self) -> None:
        """Stop it now (SIGKILL: what a crash or a restart of the host looks like)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            assert self.process.stdout is not None
            self.process.stdout.close()
            self.process = None

    def restart(self) -> None:
        """Stop, then start empty on the same port (persistence is off)."""
        self.stop()
        self.start()

    def cli(self, *args: str) -> str:
        """Run one command with redis-cli (e.g. to count keys), or raise."""
        return subprocess.run(
            ["redis-cli", "-p", str(self.port), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()


class RedisClusterServer:
    """A Redis Cluster of `size` masters (no replicas) on 127.0.0.1, each a `RedisServer`;
    `url` is its first node's (clients discover the others)."""

    def __init__(self, workdir: Path, size: int = 3) -> None:
        self.nodes = []
        for n in range(size):
            (workdir / f"node{n}").mkdir()
            node = RedisServer(
                workdir / f"node{n}",
                "--cluster-enabled", "yes",
                "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "2000",
            )  # fmt: skip
            self.nodes.append(node)

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> None:
        """Start the nodes, give them the slots, and wait until the cluster says ok."""
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        for _ in range(200):
            if all("cluster_state:ok" in n.cli("CLUSTER", "INFO") for n in self.nodes):
                return
            time.sleep(0.05)
        raise RuntimeError("the cluster did not come up")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
