"""A block of a task that a callback can end with an exception: what a task group does
when one of its tasks fails (the others are cancelled, the error raised), for a task that
waits on its own and a callback that learns of the failure, without a task for each.

A call used to run its Deepgram stream's sender and the waits for each side's end as four
tasks under two task groups (≈ 5 KB per live call, issue 15): now its handler's task runs
the sender inline, within an `Interrupt` that the ends' callbacks fail.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class Interrupt:
    """`with interrupt:` in a task; `interrupt.fail(exc)` from a callback (or another task)
    then cancels what the block awaits, and the block raises `exc` once it has unwound, as
    a task group raises its failed task's error after cancelling the others. The first
    error given wins. Given before the block, it is raised as the block begins (its body
    never runs); given after it, it is ignored.

    If the task is also cancelled from outside, the cancellation wins, as with a task
    group: the block raises `CancelledError`, unless the block itself swallows that
    cancellation (the call's Deepgram side does not). `fail()` is for callbacks and other
    tasks of a loop without eager tasks: on Python 3.12 an eager task failing the block
    from within the block's step would leave a cancellation pending after it (`uncancel`
    clears one only from 3.13). One block per `Interrupt`."""

    __slots__ = ("_cancelled", "_error", "_over", "_task")

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None  # while the block runs
        self._error: BaseException | None = None
        self._cancelled = False  # the block's task was cancelled for `_error`
        self._over = False  # the block has ended

    @property
    def error(self) -> BaseException | None:
        """The error given (and not ignored), if any."""
        return self._error

    def fail(self, exc: BaseException) -> None:
        """End the block with `exc` (see the class)."""
        if self._error is not None or self._over:
            return
        self._error = exc
        task = self._task
        if task is None:
            return  # raised as the block begins
        if asyncio.current_task() is task:  # the block's own code: cancel once it waits
            asyncio.get_running_loop().call_soon(self._cancel)
        else:
            self._cancel()

    def __enter__(self) -> None:
        task = asyncio.current_task()
        assert task is not None, "an Interrupt's block runs in a task"
        if self._error is not None:
            self._over = True
            raise self._error
        self._task = task

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        task, self._task, self._over = self._task, None, True
        error = self._error
        if error is None:
            return
        if self._cancelled and task is not None:
            # Our cancel() counted once: take it back. One left: cancelled from outside too.
            if task.uncancel() and kind is asyncio.CancelledError:
                return
        raise error

    def _cancel(self) -> None:
        if self._task is not None and not self._cancelled:
            self._cancelled = True
            self._task.cancel()
