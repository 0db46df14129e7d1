"""Audio waiting for Deepgram: a bounded FIFO of mixed chunks, each with its place on the
call's timeline.

Normally it holds a chunk or two. While Deepgram is unreachable it holds what the call says
meanwhile, up to `max_bytes`; beyond that the oldest audio is dropped and counted, so memory
stays bounded however long the outage. A chunk that could not be sent goes back to the front.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import NamedTuple


class Chunk(NamedTuple):
    """Mixed audio, the byte offset of its first byte on the call's timeline, and when the
    first Twilio frame in it arrived (the caller's clock; 0.0 when not known)."""

    position: int
    data: bytes
    since: float = 0.0


# Sends a chunk at once if it can: False when it cannot, and the chunk is queued instead.
DirectSend = Callable[[Chunk], bool]


class AudioBuffer:
    """Chunks in order, for one reader: `take()` the next, `wait()` while there is none;
    after `close()` and the last chunk, `take()` returns None and `closed` is true.

    While its consumer waits (`wait(direct)`) with nothing queued, `direct` is
    set: a chunk put then is handed to it at once, in the producer's step, instead of waking the
    consumer's task.

    One per call: slots, a deque only while chunks wait (an empty one is 0.75 KB; with
    direct sends none waits) and a future only while its reader waits (an asyncio.Event holds a
    deque of its own)."""

    __slots__ = (
        "_chunks",
        "_closed",
        "_held",
        "_waiter",
        "direct",
        "dropped_bytes",
        "max_bytes",
        "produced_bytes",
    )

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.produced_bytes = 0  # the call's timeline so far
        self.dropped_bytes = 0  # oldest audio dropped to stay within max_bytes
        self._chunks: deque[Chunk] | None = None  # None while empty
        self._held = 0  # bytes in _chunks
        self._closed = False
        self._waiter: asyncio.Future[None] | None = None  # while its reader waits
        self.direct: DirectSend | None = None

    def put(self, data: bytes, since: float = 0.0) -> None:
        """Append the call's next audio, whose first frame arrived at `since`; drop the
        oldest if over the bound."""
        if not data:
            return
        chunk = Chunk(self.produced_bytes, data, since)
        self.produced_bytes += len(data)
        chunks = self._chunks
        if chunks is None:
            direct = self.direct
            if direct is not None and direct(chunk):
                return
            chunks = self._chunks = deque()
        chunks.append(chunk)
        self._held += len(data)
        while self._held > self.max_bytes and len(chunks) > 1:
            oldest = chunks.popleft()
            self._held -= len(oldest.data)
            self.dropped_bytes += len(oldest.data)
        self._wake()

    def put_back(self, chunk: Chunk) -> None:
        """Return a chunk that was taken but not sent: it goes out first next time."""
        if self._chunks is None:
            self._chunks = deque()
        self._chunks.appendleft(chunk)
        self._held += len(chunk.data)
        self._wake()

    def close(self) -> None:
        """No more audio will come; `take()` returns None once the rest is taken."""
        self._closed = True
        self._wake()

    @property
    def held_bytes(self) -> int:
        """Bytes waiting."""
        return self._held

    @property
    def closed(self) -> bool:
        """No more audio will be put."""
        return self._closed

    def take(self) -> Chunk | None:
        """The oldest waiting chunk, or None if none waits."""
        chunks = self._chunks
        if not chunks:
            return None
        chunk = chunks.popleft()
        if not chunks:
            self._chunks = None
        self._held -= len(chunk.data)
        return chunk

    def wait(self, direct: DirectSend | None = None) -> asyncio.Future[None]:
        """A future done once a chunk is put or the buffer closes; until then chunks put go to
        `direct` (see the class). For one task at a time, which calls `stop_waiting` as its
        wait ends, however it ends: a future, not a coroutine (no frame while waiting)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        self.direct = direct
        return waiter

    def stop_waiting(self) -> None:
        """The wait has ended: chunks put are queued again."""
        self._waiter = self.direct = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
