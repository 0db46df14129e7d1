"""A fake Deepgram live-transcription server: the synthetic engine with fault knobs.

`FakeDeepgram` is `engine.synthetic.SyntheticEngine` (Deepgram's live protocol on
``ws://127.0.0.1:<port>/v1/listen``, deterministic transcripts derived from the audio, every
stream recorded) plus the faults a test injects: refuse upgrades with a given status
(`reject_status`, `refuse_next`), drop each stream after a while (`drop_after_s`), and, on
demand, close a stream from Deepgram's side (`drop`), do so and hold the connection open until
told (`drop_and_hold`, `release`), cut its TCP connection (`cut`) or stop reading it (`stall`).
"""

from __future__ import annotations

import asyncio
import os
import socket
from http import HTTPStatus
from types import TracebackType
from typing import Final

from websockets.asyncio.server import ServerConnection
from websockets.frames import CloseCode
from websockets.protocol import Protocol, Side, State

from ..deepgram_server_protocol import Refusal, idle_deadline
from ..engine.synthetic import SyntheticEngine, SyntheticStream

__all__ = ["FakeDeepgram", "next_deadline"]

_DROP_REASON: Final = "NET-0000 fake drop"


def next_deadline(
    *,
    opened_at: float,
    last_activity: float,
    got_audio: bool,
    idle_timeout_s: float,
    drop_after_s: float | None,
) -> tuple[float, str]:
    """Return when a stream must be closed with 1011 if nothing happens before, and the reason.

    Deepgram's NET-0001 rule (`idle_deadline`), unless the `drop_after_s` fault knob (seconds
    after the opening) comes first.
    """
    deadline, reason = idle_deadline(
        opened_at=opened_at,
        last_activity=last_activity,
        got_audio=got_audio,
        idle_timeout_s=idle_timeout_s,
    )
    if drop_after_s is not None and opened_at + drop_after_s <= deadline:
        return opened_at + drop_after_s, _DROP_REASON
    return deadline, reason


class FakeDeepgram(SyntheticEngine):
    """A fake Deepgram live endpoint on 127.0.0.1, started and closed as an async context manager.

    `SyntheticEngine`'s options (`api_key`, `result_ms`, `idle_timeout_s`, `record`) and its
    records (`streams`, `refusals`, `next_stream`), plus fault knobs: `reject_status` (refuse
    every upgrade with this HTTP status), `drop_after_s` (close each stream with 1011 NET-0000
    this long after it opened).
    """

    def __init__(
        self,
        *,
        api_key: str | None = None,
        result_ms: int = 250,
        idle_timeout_s: float = 10.0,
        reject_status: int | None = None,
        drop_after_s: float | None = None,
        record: bool = True,
    ) -> None:
        super().__init__(
            api_key=api_key, result_ms=result_ms, idle_timeout_s=idle_timeout_s, record=record
        )
        if drop_after_s is not None and drop_after_s < 0:
            raise ValueError(f"drop_after_s must not be negative, got {drop_after_s}")
        if reject_status is not None and not 400 <= HTTPStatus(reject_status) <= 599:
            raise ValueError(f"reject_status must be a 4xx or 5xx status, got {reject_status}")
        self.reject_status = reject_status
        self.drop_after_s = drop_after_s
        self._refuse_next: list[int] = []
        self._held: dict[SyntheticStream, asyncio.Task[None]] = {}  # drop_and_hold's closes

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Release the held streams, then close as the engine does."""
        for stream in list(self._held):
            await self.release(stream)
        await super().__aexit__(exc_type, exc, tb)

    # Faults on demand.

    def refuse_next(self, *statuses: int) -> None:
        """Refuse the next upgrades with these HTTP statuses, in order (then as configured)."""
        self._refuse_next.extend(statuses)

    async def drop(
        self,
        stream: SyntheticStream,
        code: int = CloseCode.INTERNAL_ERROR,
        reason: str = _DROP_REASON,
    ) -> None:
        """Close `stream` from Deepgram's side, as Deepgram does on an internal error."""
        ws = self._connections.get(stream)
        if ws is not None:
            await self._close(ws, stream, code, reason)

    async def drop_and_hold(
        self,
        stream: SyntheticStream,
        code: int = CloseCode.INTERNAL_ERROR,
        reason: str = _DROP_REASON,
        *,
        timeout: float = 5.0,  # noqa: ASYNC109 - bounds the wait, as next_stream's does
    ) -> None:
        """Close `stream` from Deepgram's side, then read nothing more from it until
        `release(stream)`. Returns once the peer's answering close frame is waiting unread
        (TimeoutError after `timeout`): the peer knows the stream is closing, but its
        connection stays open (until `release`, or its own close timeout), so anything it
        tries to send meanwhile fails without reaching the wire. Call it while the peer is
        not sending: audio in flight would be held with the close frame and lost."""
        ws = self._connections[stream]
        ws.transport.pause_reading()
        if stream.close_code is None:
            stream.close_code, stream.close_reason = code, reason
        # ws.close() sends the close frame now and returns once the connection is closed.
        self._held[stream] = asyncio.create_task(ws.close(code, reason))
        async with asyncio.timeout(timeout):
            while not _close_frame_waiting(ws):  # noqa: ASYNC110 - a socket to peek at, no event
                await asyncio.sleep(0.005)

    async def release(self, stream: SyntheticStream) -> None:
        """Read `stream` again after `drop_and_hold`, and return once it is closed."""
        closing = self._held.pop(stream, None)
        ws = self._connections.get(stream)
        if ws is not None:
            ws.transport.resume_reading()
        if closing is not None:
            await closing

    def cut(self, stream: SyntheticStream) -> None:
        """Drop `stream`'s TCP connection without a close frame, like a network failure."""
        ws = self._connections.get(stream)
        if ws is not None:
            ws.transport.abort()

    def stall(self, stream: SyntheticStream) -> None:
        """Stop reading `stream` (no results, no pongs): a hung server or a black hole."""
        ws = self._connections.get(stream)
        if ws is not None:
            ws.transport.pause_reading()

    # The synthetic engine's hooks.

    def _forced_refusal(self) -> Refusal | None:
        status = self._refuse_next.pop(0) if self._refuse_next else self.reject_status
        if status is None:
            return None
        phrase = HTTPStatus(status).phrase
        return Refusal(status, phrase, f"{phrase}: refused by the fake's reject_status")

    def _deadline(self, stream: SyntheticStream) -> tuple[float, str]:
        return next_deadline(
            opened_at=stream.opened_at,
            last_activity=stream.last_activity,
            got_audio=stream.got_audio,
            idle_timeout_s=self.idle_timeout_s,
            drop_after_s=self.drop_after_s,
        )


def _close_frame_waiting(ws: ServerConnection) -> bool:
    """Whether a close frame from the peer waits, unread, in `ws`'s socket (its reading paused
    with no frame half read). The socket is peeked at, so it is read later as it would be."""
    fd = os.dup(ws.transport.get_extra_info("socket").fileno())
    with socket.socket(fileno=fd) as sock:
        try:
            waiting = sock.recv(1 << 16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
    frames = Protocol(Side.SERVER, state=State.OPEN, max_size=None)
    frames.receive_data(waiting)
    return frames.close_rcvd is not None
