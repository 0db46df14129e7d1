"""The processes around a run: the proxy under test, CPU placement, and py-spy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

__all__ = [
    "BenchError",
    "Placement",
    "ProxyProcess",
    "Serve",
    "Serving",
    "one_proxy",
    "plan_placement",
    "profiled",
]

_START_TIMEOUT_S: Final = 20.0
_LISTENING = re.compile(r"listening on ws://127\.0\.0\.1:(\d+)")


class BenchError(Exception):
    """The benchmark could not run (the proxy did not start, a call could not be set up)."""


@dataclass(frozen=True, slots=True)
class Placement:
    """The CPUs of the proxy and of the load (None: not pinned)."""

    proxy: frozenset[int] | None
    load: frozenset[int] | None

    def describe(self) -> str:
        """For the report."""
        if self.proxy is None or self.load is None:
            return "not pinned (one CPU available): the proxy and the load share it"
        return (
            f"proxy on CPU {_cpus(self.proxy)}; "
            f"load generator + fake Deepgram on CPU {_cpus(self.load)}"
        )


def _cpus(cpus: frozenset[int]) -> str:
    return ",".join(map(str, sorted(cpus)))


def plan_placement(proxy_cpu: int | None) -> Placement:
    """One CPU for the proxy (`proxy_cpu`, else the last), the rest for the load, among the
    CPUs this process may use; unpinned when there is only one."""
    if not hasattr(os, "sched_getaffinity"):
        return Placement(None, None)
    available = frozenset(os.sched_getaffinity(0))
    if len(available) < 2:
        return Placement(None, None)
    chosen = max(available) if proxy_cpu is None else proxy_cpu
    if chosen not in available:
        raise BenchError(f"--proxy-cpu {chosen}: not one of the CPUs available {sorted(available)}")
    return Placement(frozenset({chosen}), available - {chosen})


class ProxyProcess:
    """``python -m twilio_dg_proxy --port 0`` (or another server `module` that logs the same
    ``listening on`` line) as a child process. Its stderr is drained (a full pipe would block
    it) and its WARNING and ERROR lines are counted."""

    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port
        self.problems = 0
        self.tail: deque[str] = deque(maxlen=20)

    @property
    def pid(self) -> int:
        """The proxy's process id."""
        return self.process.pid

    @classmethod
    @asynccontextmanager
    async def started(
        cls, env: Mapping[str, str], cpus: frozenset[int] | None, module: str = "twilio_dg_proxy"
    ) -> AsyncIterator[ProxyProcess]:
        """Start ``python -m module`` with `env`, pinned to `cpus`; SIGTERM it (then kill) on
        exit. It runs in a temporary directory of its own, removed after: what it writes
        there (the transcript store's default file) is the run's, not the caller's, and it
        reads no `.env` (its settings are `env`'s alone)."""
        with tempfile.TemporaryDirectory(prefix="tdp-proxy-") as workdir:
            async with cls._started_in(workdir, env, cpus, module) as proxy:
                yield proxy

    @classmethod
    @asynccontextmanager
    async def _started_in(
        cls, workdir: str, env: Mapping[str, str], cpus: frozenset[int] | None, module: str
    ) -> AsyncIterator[ProxyProcess]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            env=_absolute_pythonpath(env),
            cwd=workdir,
        )
        drain: asyncio.Task[None] | None = None
        try:
            if cpus is not None:
                # The interpreter is still starting: every thread it makes inherits this.
                os.sched_setaffinity(process.pid, cpus)
            proxy = cls(process, await cls._read_port(process))
            drain = asyncio.create_task(proxy._drain())
            yield proxy
            await proxy._terminate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            if drain is not None:
                await drain

    @staticmethod
    async def _read_port(process: asyncio.subprocess.Process) -> int:
        assert process.stderr is not None
        seen: list[str] = []
        try:
            async with asyncio.timeout(_START_TIMEOUT_S):
                while line := (await process.stderr.readline()).decode(errors="replace"):
                    seen.append(line)
                    if match := _LISTENING.search(line):
                        return int(match[1])
        except TimeoutError:
            pass
        raise BenchError("the proxy did not start listening:\n" + "".join(seen[-20:]))

    async def _drain(self) -> None:
        assert self.process.stderr is not None
        while line := (await self.process.stderr.readline()).decode(errors="replace"):
            self.tail.append(line)
            if " WARNING " in line or " ERROR " in line or "Traceback" in line:
                self.problems += 1

    async def _terminate(self) -> None:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(15):
                    await self.process.wait()

    async def health(self) -> dict[str, Any]:
        """The proxy's /healthz document."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            response = await reader.read()
        finally:
            writer.close()
            await writer.wait_closed()
        _, _, body = response.partition(b"\r\n\r\n")
        health: dict[str, Any] = json.loads(body)
        return health


@dataclass(frozen=True, slots=True)
class Serving:
    """The server side of a run: `proxy` takes the calls, `watch` their watchers (the same
    process unless the run spreads them); `beside` names further server-side processes
    (name → pid) whose CPU the window measures, on the proxy's CPUs; `on_sample` runs at
    each of the window's samples (at its start and end)."""

    proxy: ProxyProcess
    watch: ProxyProcess
    beside: Mapping[str, int] = field(default_factory=dict)
    on_sample: Callable[[], None] | None = None
    placement: str | None = None  # how they were placed, if not as `Placement.describe`


#: Starts the server side of a run with the proxy's environment, on the placement's CPUs.
Serve = Callable[[Mapping[str, str], Placement], AbstractAsyncContextManager[Serving]]


@asynccontextmanager
async def one_proxy(env: Mapping[str, str], placement: Placement) -> AsyncIterator[Serving]:
    """The single-process path: one proxy takes the calls and their watchers."""
    async with ProxyProcess.started(env, placement.proxy) as proxy:
        yield Serving(proxy, proxy)


def _py_spy() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


@asynccontextmanager
async def profiled(
    path: Path | None, pid: int, seconds: float, started: asyncio.Future[None]
) -> AsyncIterator[None]:
    """Record py-spy's raw profile of `pid` into `path` for `seconds` once `started` resolves
    (nothing when `path` is None); the block's end waits for py-spy to finish."""
    if path is None:
        yield
        return
    py_spy = _py_spy()
    if py_spy is None:
        raise BenchError("--profile needs py-spy: pip install py-spy")

    async def record() -> None:
        await started
        process = await asyncio.create_subprocess_exec(
            py_spy,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(max(1, round(seconds))),
            "--rate",
            "100",
            "--nonblocking",  # never pause the proxy: its latency is being measured
            "--format",
            "raw",
            "--output",
            str(path),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    task = asyncio.create_task(record())
    try:
        yield
        async with asyncio.timeout(seconds + 30):
            await task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _absolute_pythonpath(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with PYTHONPATH's entries made absolute (an empty one is the working
    directory): the process runs elsewhere."""
    paths = env.get("PYTHONPATH")
    if not paths:
        return dict(env)
    absolute = [os.path.abspath(p or os.curdir) for p in paths.split(os.pathsep)]
    return {**env, "PYTHONPATH": os.pathsep.join(absolute)}
