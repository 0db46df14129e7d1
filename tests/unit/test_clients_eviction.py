"""clients.py's eviction close, where it cannot start a task."""

from __future__ import annotations

from collections.abc import Coroutine
from types import SimpleNamespace
from typing import Any, cast

from websockets.asyncio.server import ServerConnection

from twilio_dg_proxy.clients import _ClosedWhenEvicted
from twilio_dg_proxy.hub import Outbox


def test_an_eviction_when_no_task_can_start_cuts_the_connection() -> None:
    """A watcher evicted while its task group shuts down (a sibling task failed) cannot
    get a task to close it gently: its connection is cut, nothing reaches the publisher,
    and the close coroutine is not left unawaited (an error under this suite's filters)."""
    aborted: list[bool] = []
    transport = SimpleNamespace(abort=lambda: aborted.append(True))
    ws = cast(ServerConnection, SimpleNamespace(transport=transport))
    outbox = Outbox(1)

    def spawn(coroutine: Coroutine[Any, Any, None]) -> object:
        raise RuntimeError("TaskGroup is shutting down")

    with _ClosedWhenEvicted(ws, outbox, "CA1", spawn):
        assert outbox.offer("m0")
        assert not outbox.offer("m1")  # evicted
    assert aborted == [True]
