"""`WorkerPool`: the recogniser's worker processes, each replaced when it dies or hangs.

Decoding holds the GIL for its whole duration, so it runs in worker processes (`model`). The
pool is ours rather than a `concurrent.futures.ProcessPoolExecutor` because of failures: one
dead worker breaks an executor for good (every pending and later call raises
BrokenProcessPool) and takes its healthy workers down with it; it cannot be told to give up on
a call that hangs either. Here each worker is a process with its own pipe, served by one driver
task that takes decode requests from a shared queue, one at a time. When a worker dies or
exceeds the decode timeout, only the request it was decoding is lost (`WorkerLost`): its driver
kills it and starts a replacement, while the other workers go on serving the queue.

Only a request (8 kHz float samples and a beam size) and its reply (a list of `Word`) cross a
pipe; the model is loaded once per worker process (`model.init_worker`).
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import traceback
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final, cast

from ..logs import get_logger
from .audio import Samples
from .model import Word, decode, init_worker, warm_up

__all__ = ["WorkerLost", "WorkerPool", "WorkerStartError"]

logger = get_logger("engine")

_RESTART_DELAYS_S: Final = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
"""Waits before starting a replacement again after one failed to start (the last repeats),
so a recogniser that can no longer load does not spin the CPU on process starts."""


class WorkerLost(RuntimeError):
    """A decode request got no answer: its worker died or exceeded the decode timeout, or no
    worker took it within the timeout. The audio is not decoded."""


class WorkerStartError(RuntimeError):
    """A worker process exited or timed out before it had loaded the model."""


@dataclass(slots=True)
class _Request:
    audio: Samples
    beam_size: int
    reply: asyncio.Future[list[Word]]


@dataclass(slots=True)
class _Worker:
    process: BaseProcess
    connection: Connection

    @property
    def pid(self) -> int:
        assert self.process.pid is not None  # set once started
        return self.process.pid


class WorkerPool:
    """`size` worker processes that load the model from `model_dir` (already verified), each
    with `cpu_threads` threads; an async context manager.

    `decode` sends one request to the next free worker and waits at most `decode_timeout_s`
    for its words, queueing included. A worker that dies, or takes longer than that on one
    request, is killed and replaced (`restarts` counts them); its request raises WorkerLost.
    Workers are started with multiprocessing's spawn method: a forked child of a process
    running an event loop and threads would inherit their locks in whatever state they were.
    """

    def __init__(
        self,
        size: int,
        model_dir: str,
        cpu_threads: int,
        *,
        decode_timeout_s: float = 30.0,
        start_timeout_s: float = 120.0,
    ) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, got {size}")
        if decode_timeout_s <= 0:
            raise ValueError(f"decode_timeout_s must be positive, got {decode_timeout_s}")
        self.size = size
        self.decode_timeout_s = decode_timeout_s
        self.start_timeout_s = start_timeout_s
        self._model_dir = model_dir
        self._cpu_threads = cpu_threads
        self._context = multiprocessing.get_context("spawn")
        self._requests: asyncio.Queue[_Request] = asyncio.Queue()
        self._workers: dict[int, _Worker] = {}  # by slot
        self._drivers: list[asyncio.Task[None]] = []
        self._busy: set[int] = set()  # slots decoding a request
        self.restarts = 0
        """Workers started in the place of one that died or hung."""
        # Pipes are read and written in threads (a request is up to 480 kB, more than a pipe
        # holds): one per slot, so a worker's wait never queues behind another's.
        self._io = ThreadPoolExecutor(max_workers=size, thread_name_prefix="engine-worker")

    @property
    def pids(self) -> frozenset[int]:
        """The process ids of the workers running now (replacements once they are ready)."""
        return frozenset(worker.pid for worker in self._workers.values())

    @property
    def in_flight(self) -> int:
        """Requests being decoded or waiting for a worker."""
        return self._requests.qsize() + len(self._busy)

    async def __aenter__(self) -> WorkerPool:
        """Start every worker and wait until each has loaded the model.

        Raises WorkerStartError when one fails to (its error is on stderr)."""
        results = await asyncio.gather(
            *(self._start_worker() for _ in range(self.size)), return_exceptions=True
        )
        workers = [result for result in results if isinstance(result, _Worker)]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is not None:
            for worker in workers:
                await self._stop_worker(worker)
            self._io.shutdown(wait=False)
            raise failure
        self._workers = dict(enumerate(workers))
        self._drivers = [
            asyncio.create_task(self._drive(slot), name=f"engine-worker-{slot}")
            for slot in range(self.size)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Stop the drivers and every worker (a decode in progress is abandoned)."""
        for task in self._drivers:
            task.cancel()
        for task in self._drivers:
            with suppress(asyncio.CancelledError):
                await task
        self._drivers = []
        for slot in list(self._workers):
            await self._stop_worker(self._workers.pop(slot))
        while not self._requests.empty():
            self._requests.get_nowait().reply.cancel()
        await asyncio.to_thread(self._io.shutdown, wait=True)

    async def decode(self, audio: Samples, beam_size: int) -> list[Word]:
        """The words of mono 8 kHz `audio`, decoded by the next free worker.

        Raises WorkerLost when no words came back within `decode_timeout_s` (the worker died
        or hung, or every worker stayed busy), and RuntimeError when decoding raised in the
        worker (a bug: its traceback is in the message)."""
        if not self._drivers:
            raise RuntimeError("WorkerPool is not started")
        reply: asyncio.Future[list[Word]] = asyncio.get_running_loop().create_future()
        self._requests.put_nowait(_Request(audio, beam_size, reply))
        try:
            async with asyncio.timeout(self.decode_timeout_s):
                return await reply
        except TimeoutError:
            # The driver holding it, if any, gives up on its worker at the same bound.
            raise WorkerLost(
                f"no words within {self.decode_timeout_s:g} s (a worker hung, or none was free)"
            ) from None
        finally:
            # Tells a driver that has not taken it yet to skip it (a no-op once answered).
            reply.cancel()

    # The drivers: one task per slot, owning that slot's worker.

    async def _drive(self, slot: int) -> None:
        """Serve requests with the slot's worker; replace it when it dies or hangs."""
        failures = 0
        while True:
            worker = self._workers.get(slot)
            if worker is None:
                try:
                    worker = await self._start_worker()
                except Exception as exc:  # WorkerStartError, or OSError starting a process
                    delay = _RESTART_DELAYS_S[min(failures, len(_RESTART_DELAYS_S) - 1)]
                    failures += 1
                    logger.error(
                        "a replacement recogniser worker failed to start (%s); "
                        "trying again in %.1f s",
                        exc,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                self._workers[slot] = worker
                logger.info("recogniser worker %d started (pid %d)", slot, worker.pid)
            request = await self._requests.get()
            if request.reply.done():  # its caller gave up while it queued
                continue
            self._busy.add(slot)
            try:
                outcome = await self._exchange(worker, request)
            finally:
                self._busy.discard(slot)
            if outcome is not None:
                logger.warning(
                    "recogniser worker %d (pid %d) %s; its utterance is lost, starting "
                    "another worker",
                    slot,
                    worker.pid,
                    outcome,
                )
                del self._workers[slot]
                self.restarts += 1
                await self._stop_worker(worker)
                if not request.reply.done():
                    request.reply.set_exception(WorkerLost(f"the recogniser worker {outcome}"))

    async def _exchange(self, worker: _Worker, request: _Request) -> str | None:
        """Have `worker` decode `request` and answer it; None, or why the worker must go."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.decode_timeout_s):
                status, value = await loop.run_in_executor(
                    self._io, _call, worker.connection, (request.audio, request.beam_size)
                )
        except TimeoutError:
            return f"took over {self.decode_timeout_s:g} s"
        except (EOFError, OSError):
            code = await loop.run_in_executor(self._io, _exit_code, worker.process)
            return f"died (exit code {code})"
        if not request.reply.done():
            if status == "ok":
                request.reply.set_result(cast(list[Word], value))
            else:
                request.reply.set_exception(RuntimeError(f"decoding failed: {value}"))
        return None

    async def _start_worker(self) -> _Worker:
        """Start a worker process and return it once it has loaded the model."""
        parent, child = self._context.Pipe()
        process = self._context.Process(
            target=serve_worker,
            args=(child, self._model_dir, self._cpu_threads),
            name="twilio-dg-proxy-recogniser",
            # A daemon is killed by multiprocessing's exit handler if the engine never stops
            # it (a crash of the parent), instead of outliving it.
            daemon=True,
        )
        process.start()
        # The parent's copy of the child's end must go, or reading would never see EOF when
        # the worker dies.
        child.close()
        worker = _Worker(process, parent)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.start_timeout_s):
                await loop.run_in_executor(self._io, parent.recv)
        except (EOFError, OSError):
            await self._stop_worker(worker)
            raise WorkerStartError(f"exit code {process.exitcode}") from None
        except TimeoutError:
            await self._stop_worker(worker)
            raise WorkerStartError(f"not ready after {self.start_timeout_s:g} s") from None
        except BaseException:
            await self._stop_worker(worker)
            raise
        return worker

    async def _stop_worker(self, worker: _Worker) -> None:
        """Kill `worker` and reap it. Workers keep nothing worth a graceful exit, and one that
        hangs would not take part in it."""
        worker.process.kill()
        await asyncio.to_thread(worker.process.join)
        # The pipe is not closed here: an I/O thread may still be reading it (it now reads
        # EOF), and closing a descriptor under a reader could hand it a reused one. It closes
        # when the last reference goes.


def _call(connection: Connection, request: tuple[Samples, int]) -> tuple[str, object]:
    """Send `request` to a worker and return its reply (in an I/O thread)."""
    connection.send(request)
    reply: tuple[str, object] = connection.recv()
    return reply


def _exit_code(process: BaseProcess) -> int | None:
    """The exit code of a process whose pipe closed (it is exiting: wait for it briefly)."""
    process.join(timeout=5.0)
    return process.exitcode


def _incoming(connection: Connection) -> Iterator[tuple[Samples, int]]:
    """The requests arriving on `connection` until the parent closes it."""
    while True:
        try:
            yield connection.recv()
        except EOFError:
            return


def serve_worker(connection: Connection, model_dir: str, cpu_threads: int) -> None:
    """A worker process's life: load the model, say so, then decode requests until the parent
    closes the pipe. Answers ("ok", words) or ("error", traceback)."""
    init_worker(model_dir, cpu_threads)
    connection.send(warm_up())
    for audio, beam_size in _incoming(connection):
        try:
            reply: tuple[str, object] = ("ok", decode(audio, beam_size))
        except Exception:  # a bug: the parent fails the stream and logs this
            reply = ("error", traceback.format_exc())
        connection.send(reply)
    os._exit(0)  # skip interpreter teardown: nothing to flush, and it is slow with the model
