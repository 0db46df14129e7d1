"""200 calls ending at once: their transcripts are saved without stalling the event loop.

The worst stall is measured by a task that sleeps 1 ms at a time and records how late it
wakes. The figure is compared only with a deliberately blocking control in the same run (the
same SQLite store, its statements run on the event loop), never with a fixed time: a busy
machine slows both. Run with `-s` to see the figures."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor, Future
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

from twilio_dg_proxy.hub import CALL_ENDED, Hub
from twilio_dg_proxy.store.base import TranscriptStore
from twilio_dg_proxy.store.postgres import PostgresStore
from twilio_dg_proxy.store.sqlite import SqliteStore
from twilio_dg_proxy.store.writer import StoreWriter
from twilio_dg_proxy.transcripts import Recorder
from twilio_dg_proxy.viewer_protocol import CallInfo

from ..timing import S
from .helpers import until

T = TypeVar("T")
CALLS = 200
FINALS_PER_CALL = 300  # some fifteen minutes of talk on two channels


class OnTheLoop(Executor):
    """The control: runs each job at once, on the calling (event loop's) thread."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # handed to the awaiting coroutine, as a thread would
            future.set_exception(exc)
        return future


def final(call: int, i: int) -> str:
    words = " ".join(f"word{call}x{i}y{k}" for k in range(12))
    return json.dumps(
        {
            "type": "Results",
            "channel_index": [i % 2, 2],
            "start": i * 1.5,
            "duration": 1.4,
            "is_final": True,
            "channel": {"alternatives": [{"transcript": words, "confidence": 0.98}]},
            "metadata": {"request_id": f"req-{call}"},
        }
    )


async def worst_stall_ending_calls_at_once(store: TranscriptStore) -> float:
    """Seconds of the longest stall of the loop while CALLS calls end at once and are saved."""
    hub = Hub(queue_limit=10)
    writer = StoreWriter(store, hub.counters, max_calls=CALLS, retention_days=30.0)
    hub.sinks.append(Recorder(lambda: 1_000_000, [writer]))
    for n in range(CALLS):
        hub.open_call(f"CA{n}", CallInfo(f"CA{n}", {"From": f"+{n}"}, ("inbound", "outbound")))
        for i in range(FINALS_PER_CALL):
            hub.publish(f"CA{n}", final(n, i))
    async with writer.running():
        await until(lambda: hub.counters.transcripts_stored == 0)
        await asyncio.sleep(0.05)  # the start-up purge is over
        stalls: list[float] = []
        done = asyncio.Event()
        sampler = asyncio.create_task(sample_lag(stalls, done))
        await asyncio.sleep(0.01)
        for n in range(CALLS):  # all in one callback: at once
            hub.end_call(f"CA{n}", CALL_ENDED)
        await until(lambda: hub.counters.transcripts_stored == CALLS, within=60 * S)
        done.set()
        await sampler
    assert hub.counters.transcripts_lost == 0
    return max(stalls)


async def sample_lag(stalls: list[float], done: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not done.is_set():
        before = loop.time()
        await asyncio.sleep(0.001)
        stalls.append(loop.time() - before - 0.001)


@asynccontextmanager
async def sqlite(path: Path, executor: Executor | None = None) -> AsyncIterator[SqliteStore]:
    async with SqliteStore.opened(str(path), executor=executor) as store:
        yield store


async def measured(opened: AbstractAsyncContextManager[TranscriptStore]) -> float:
    async with opened as store:
        return await worst_stall_ending_calls_at_once(store)


async def test_two_hundred_calls_ending_at_once_stall_the_loop_less_than_a_blocking_store(
    tmp_path: Path, postgres_url: str
) -> None:
    control = await measured(sqlite(tmp_path / "control.sqlite3", OnTheLoop()))
    threaded = await measured(sqlite(tmp_path / "threaded.sqlite3"))
    postgres = await measured(PostgresStore.opened(postgres_url))
    print(
        f"\nworst event-loop stall while {CALLS} calls ({FINALS_PER_CALL} finals each) end at "
        f"once: SQLite on its thread {threaded * 1000:.1f} ms, PostgreSQL "
        f"{postgres * 1000:.1f} ms; control (SQLite on the loop) {control * 1000:.1f} ms"
    )
    assert threaded < control
    assert postgres < control
