"""`WORKERS=N`: N proxy processes on one port, under a supervisor that restarts them.

The supervisor (`Supervisor`) serves nothing itself. It holds the port, starts N copies of
`serve` (each with its own event loop: `sys.executable -m twilio_dg_proxy serve ...
--worker SPEC`), restarts any that dies, and forwards SIGTERM to all of them on shutdown.

How the workers share the port (`hold_port`, `reuse_port_balances`):
- on Linux, each worker binds its own listening socket with SO_REUSEPORT and the kernel
  spreads new connections over them. The supervisor binds one more socket with SO_REUSEPORT
  but never listens on it: it receives no connections, yet holds the port (PORT=0 picks it
  once, for every worker and every restart) and proves at start that the port is ours;
- elsewhere (SO_REUSEPORT absent, or present without balancing, as on macOS where the last
  socket bound takes every connection), the supervisor listens on one socket and the
  workers inherit it: each connection goes to whichever worker accepts first.

Each worker also inherits one end of a socket pair (its link): it sends `ready` there once it
serves, and the supervisor waits for every worker's before it says it listens. When the
supervisor dies, even by SIGKILL, every link reads end-of-file and the worker drains as on
SIGTERM (`WorkerLink.stop_when_orphaned`), so workers never outlive it holding the port.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from .backoff import Backoff
from .logs import get_logger

__all__ = [
    "RestartBackoff",
    "Supervisor",
    "WorkerLink",
    "WorkerSpec",
    "WorkerStartError",
    "describe_exit",
    "hold_port",
    "reuse_port_balances",
]

logger = get_logger("workers")

# Once a second signal has told the workers to exit at once, how long they get to do so
# before the supervisor kills them (a worker stuck in a blocking call cannot run its
# handler); the supervisor must not outlive a second Ctrl-C by more than this.
FORCE_EXIT_S: Final = 5.0
# Listening backlog of the one socket workers inherit (asyncio's and websockets' default).
BACKLOG: Final = 100
_READY: Final = b"ready\n"

Outcome = Literal["stopped", "interrupted"]
"""How a supervisor ended: stopped by one signal (every worker drained), or interrupted by a
second one (every worker told to exit at once)."""


class RestartBackoff:
    """When to restart a worker that died: after 0.5 s, doubling up to 10 s while it keeps
    dying, back to 0.5 s once it has run for 30 s. It never gives up: a proxy that cannot
    serve now (say Redis is down) should serve again as soon as it can. Pure: no clock."""

    def __init__(
        self, first_s: float = 0.5, longest_s: float = 10.0, reset_after_s: float = 30.0
    ) -> None:
        self.backoff = Backoff(first_s, longest_s, "none")
        self.reset_after_s = reset_after_s
        self._deaths = 0  # in a row, each before reset_after_s

    def delay(self, ran_for_s: float) -> float:
        """Seconds to wait before restarting a worker that died after running `ran_for_s`."""
        self._deaths = 1 if ran_for_s >= self.reset_after_s else self._deaths + 1
        return self.backoff.delay(self._deaths)


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What a worker is told on its command line (`--worker`, hidden): its number (1-based),
    the descriptor of its link to the supervisor, and the descriptor of the listening
    socket it inherits (None: it binds its own with SO_REUSEPORT)."""

    index: int
    link_fd: int
    socket_fd: int | None = None

    def option(self) -> str:
        """The option's value: ``INDEX,LINK_FD[,SOCKET_FD]``."""
        fds = [self.link_fd] if self.socket_fd is None else [self.link_fd, self.socket_fd]
        return ",".join(str(n) for n in (self.index, *fds))

    @classmethod
    def parse(cls, raw: str) -> WorkerSpec:
        """The inverse of `option`; raises ValueError for anything else."""
        try:
            numbers = [int(part) for part in raw.split(",")]
        except ValueError:
            raise ValueError(f"expected INDEX,LINK_FD[,SOCKET_FD], got {raw!r}") from None
        if len(numbers) not in (2, 3) or min(numbers) < 0 or numbers[0] < 1:
            raise ValueError(f"expected INDEX,LINK_FD[,SOCKET_FD], got {raw!r}")
        return cls(*numbers)


class WorkerStartError(Exception):
    """A worker exited before it was serving, while the supervisor was starting: the
    settings or the port cannot work (the worker logged why). `status` is the exit status
    to end with (the worker's, or 1 if it was killed by a signal)."""

    def __init__(self, message: str, returncode: int) -> None:
        super().__init__(message)
        self.status = returncode if returncode > 0 else 1


def describe_exit(returncode: int) -> str:
    """A process's end in words: ``exited with status 1``, ``was killed by SIGKILL``."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    return f"was killed by {name}"


def reuse_port_balances() -> bool:
    """True where workers can each listen with SO_REUSEPORT and the kernel balances new
    connections between them (Linux); elsewhere they share one inherited socket."""
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def hold_port(host: str, port: int, *, listen: bool) -> socket.socket:
    """A socket bound to the first address `host` resolves to, on `port` (0: a free one):
    listening, for workers to inherit (`listen`); else bound with SO_REUSEPORT and not
    listening, so it takes no connections but keeps the port for workers that bind it with
    SO_REUSEPORT too. Raises OSError if the address cannot be bound."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:  # as asyncio's create_server: IPv6 only, as asked
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if listen:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        if listen:
            sock.listen(BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


class WorkerLink:
    """A worker's side of its supervisor: the link, and the listening socket it inherited
    (None: bind one with SO_REUSEPORT)."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.index = spec.index
        self._link = socket.socket(fileno=spec.link_fd)
        self.listening_socket = (
            None if spec.socket_fd is None else socket.socket(fileno=spec.socket_fd)
        )

    def ready(self) -> None:
        """Tell the supervisor this worker serves (once it listens)."""
        self._link.sendall(_READY)  # a few bytes into an empty socket buffer: never blocks

    def stop_when_orphaned(self) -> None:
        """Send this process SIGTERM (the drain of `serve_until_signalled`) when the link
        closes: the supervisor has died without stopping its workers."""
        loop = asyncio.get_running_loop()
        self._link.setblocking(False)

        def readable() -> None:
            try:
                if self._link.recv(64):  # the supervisor sends nothing: ignore it if it does
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            loop.remove_reader(self._link.fileno())
            logger.warning("the supervisor has gone: stopping")
            os.kill(os.getpid(), signal.SIGTERM)

        loop.add_reader(self._link.fileno(), readable)


@dataclass(slots=True)
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    link: socket.socket  # the supervisor's end

    @property
    def pid(self) -> int:
        return self.process.pid

    async def serving(self) -> bool:
        """Wait until it says it serves (True) or dies first (False)."""
        loop = asyncio.get_running_loop()
        received = b""
        while not received.endswith(_READY):
            try:
                data = await loop.sock_recv(self.link, 64)
            except OSError:
                return False
            if not data:
                return False
            received += data
        return True

    def send(self, sig: signal.Signals) -> None:
        """Send `sig` unless it has exited."""
        if self.process.returncode is None:
            try:
                self.process.send_signal(sig)
            except ProcessLookupError:  # exited, not yet reaped
                pass


class Supervisor:
    """Keeps `count` workers running; `command(spec)` is a worker's command line. `shared`
    is the listening socket workers inherit, or None where each binds its own.

    `run` starts them, waits until each serves, then restarts any that dies (after
    `RestartBackoff`) until `stop`. If one dies before all serve at start, the others are
    stopped and `run` raises WorkerStartError: restarting would fail the same way.
    """

    def __init__(
        self,
        count: int,
        command: Callable[[WorkerSpec], Sequence[str]],
        *,
        shared: socket.socket | None,
        force_exit_s: float = FORCE_EXIT_S,
        exited: Callable[[int], None] = lambda pid: None,
    ) -> None:
        """`exited(pid)` is called when a worker's process has exited (e.g. to drop its
        live metrics: `metrics.forget_worker`)."""
        self.count = count
        self.command = command
        self.shared = shared
        self.force_exit_s = force_exit_s
        self.exited = exited
        self._workers: dict[int, _Worker] = {}
        self._stopping = asyncio.Event()
        self._stops = 0
        self._serving: Callable[[], None] = lambda: None
        self._serving_count = 0  # workers that have served at least once
        self._all_serving = False
        self._failure: WorkerStartError | None = None
        self._force: asyncio.TimerHandle | None = None

    @property
    def pids(self) -> dict[int, int]:
        """The pid of each running worker, by number."""
        return {index: worker.pid for index, worker in self._workers.items()}

    async def run_until_signalled(self, serving: Callable[[], None]) -> Outcome:
        """`run`, with SIGTERM and SIGINT calling `stop`."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop)
        try:
            return await self.run(serving)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    async def run(self, serving: Callable[[], None]) -> Outcome:
        """Run the workers until `stop` and every worker has exited; `serving()` is called
        once, when all serve. Raises WorkerStartError (see the class)."""
        self._serving = serving
        try:
            async with asyncio.TaskGroup() as group:
                for index in range(1, self.count + 1):
                    group.create_task(self._keep(index))
        finally:
            if self._force is not None:
                self._force.cancel()
        if self._failure is not None:
            raise self._failure
        return "interrupted" if self._stops > 1 else "stopped"

    def stop(self) -> None:
        """The first call: SIGTERM to every worker (each drains its calls), no more
        restarts. A second: SIGTERM again (each exits at once), then SIGKILL to any still
        running after `force_exit_s`."""
        self._stops += 1
        if self._stops == 1:
            logger.info("stopping: %d worker(s) drain their calls", len(self._workers))
            self._stop_workers()
        elif self._stops == 2:
            logger.warning("second signal: workers exit now")
            self._stop_workers()
            loop = asyncio.get_running_loop()
            self._force = loop.call_later(self.force_exit_s, self._kill_workers)

    def _stop_workers(self) -> None:
        self._stopping.set()
        for worker in self._workers.values():
            worker.send(signal.SIGTERM)

    def _kill_workers(self) -> None:
        for worker in self._workers.values():
            if worker.process.returncode is None:
                logger.warning("killing worker %d (pid %d)", worker.index, worker.pid)
                worker.send(signal.SIGKILL)

    async def _keep(self, index: int) -> None:
        """Keep worker `index` running until the supervisor stops."""
        backoff = RestartBackoff()
        loop = asyncio.get_running_loop()
        first = True
        while not self._stopping.is_set():
            started = loop.time()
            try:
                worker = await self._start(index)
            except OSError as exc:  # no process could be made (EAGAIN, EMFILE, ENOMEM)
                how, returncode = f"could not be started ({exc})", 1
            else:
                try:
                    if await worker.serving():
                        if first:
                            first = False
                            self._first_serving()
                        else:
                            logger.info("worker %d (pid %d) serves again", index, worker.pid)
                    returncode = await worker.process.wait()
                finally:
                    worker.link.close()
                    del self._workers[index]
                self.exited(worker.pid)
                how = f"(pid {worker.pid}) {describe_exit(returncode)}"
            if self._stopping.is_set():
                return
            if not self._all_serving:
                message = f"worker {index} {how} before it was serving"
                self._failure = WorkerStartError(message, returncode)
                logger.error("%s: stopping", self._failure)
                self._stop_workers()
                return
            delay = backoff.delay(loop.time() - started)
            logger.warning("worker %d %s; restarting it in %.1f s", index, how, delay)
            try:
                async with asyncio.timeout(delay):
                    await self._stopping.wait()
            except TimeoutError:
                pass

    def _first_serving(self) -> None:
        """A worker serves for the first time: once all do, the supervisor serves."""
        self._serving_count += 1
        if self._serving_count == self.count and not self._stopping.is_set():
            self._all_serving = True
            self._serving()

    async def _start(self, index: int) -> _Worker:
        """Start worker `index` in its own process group, so that a Ctrl-C at the terminal
        reaches the supervisor only (which forwards one SIGTERM), not every worker too."""
        ours, theirs = socket.socketpair()
        fds = [theirs.fileno()]
        if self.shared is not None:
            fds.append(self.shared.fileno())
        spec = WorkerSpec(index, fds[0], fds[1] if len(fds) > 1 else None)
        try:
            process = await asyncio.create_subprocess_exec(
                *self.command(spec),
                stdin=asyncio.subprocess.DEVNULL,
                pass_fds=fds,
                process_group=0,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its copy: its end closes when the worker exits
        ours.setblocking(False)
        worker = _Worker(index, process, ours)
        self._workers[index] = worker
        logger.info("worker %d started (pid %d)", index, process.pid)
        if self._stopping.is_set():  # stopped while it was starting
            worker.send(signal.SIGTERM)
        return worker
