"""The event loop the project's long-running processes use: the proxy, and the benchmark's
load generator and fake Deepgram (so that the load stays cheap next to what it measures)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from importlib.metadata import version
from typing import Any, TypeVar

T = TypeVar("T")


def event_loop_factory() -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """uvloop's event loop where it is installed (a dependency except on Windows: it runs
    sockets and callbacks in C), else asyncio's; and the loop's name, to log."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop, "asyncio (uvloop is not installed)"
    return uvloop.new_event_loop, f"uvloop {version('uvloop')}"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `event_loop_factory` chooses."""
    loop_factory, _ = event_loop_factory()
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)
