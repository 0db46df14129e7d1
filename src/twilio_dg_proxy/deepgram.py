"""The Deepgram link's I/O: live streams for one call, reopened when Deepgram drops them.

`DeepgramLink` is one WebSocket stream; its results are published as they arrive (from the
socket callback, or with DIRECT_RECEIVE off from a task reading `recv()`). `DeepgramSession`
is the Deepgram side of a call, run by the call's task: per stream, `deepgram_sender` sends
the call's audio (KeepAlive when idle, CloseStream at the end), then waits for the stream to
close; the stream's failure (a close before CloseStream) interrupts the sender at once
(`DeepgramLink.interrupting`). When a stream fails in a retryable way it opens another after
a jittered backoff, sends the audio that waited meanwhile first, and shifts the new stream's
times so subscribers see one timeline. The pure parts are in `deepgram_protocol.py`.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.protocol import State

from .audio_buffer import AudioBuffer, Chunk, DirectSend
from .config import Settings
from .deepgram_protocol import (
    CLOSE_STREAM,
    KEEPALIVE,
    Backoff,
    auth_headers,
    is_retryable,
    listen_url,
    replay_wait,
    shift_times,
)
from .direct_connection import DirectClientConnection, forget_handshake_headers, receiving
from .exceptions import (
    DeepgramClosed,
    DeepgramError,
    DeepgramNotConfigured,
    DeepgramRefused,
    DeepgramUnavailable,
)
from .interrupts import Interrupt
from .observations import NO_OBSERVER, DeepgramFailure, Observer, deepgram_failure

Log = logging.LoggerAdapter[logging.Logger]

# Deepgram's messages are small JSON; a megabyte is generous and still bounds memory.
_MAX_RESULT_BYTES = 1 << 20
# A stream that lived this long was a success: the retry budget starts over after it.
STABLE_STREAM_S = 10.0


@dataclass(frozen=True, slots=True)
class Pings:
    """WebSocket pings on a Deepgram stream: they detect a stalled stream (Deepgram does
    not count them as traffic). Seconds between pings, and to wait for each pong."""

    interval_s: float = 5.0
    timeout_s: float = 5.0


DEFAULT_PINGS = Pings()


class DeepgramLink:
    """One live-transcription stream. Audio and control go out; results come back."""

    __slots__ = (
        "_close_timeout",
        "_closing",
        "_ended",
        "_error",
        "_interrupt",
        "_log",
        "_publish",
        "_ws",
        "offset_s",
    )

    def __init__(self, ws: ClientConnection, settings: Settings, log: Log) -> None:
        self._ws = ws
        self._close_timeout = settings.deepgram_close_timeout_s
        self._log = log
        self._closing = False  # True once CloseStream is sent: a close is then expected
        self.offset_s = 0.0  # where this stream's time 0 lies on the call's timeline
        self._publish: Callable[[str], None] = _no_publish
        # Done when the stream is closed, or publishing failed: a future, not an
        # asyncio.Event (0.8 KB per call with its deque).
        self._ended: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: Exception | None = None  # a bug met while publishing
        self._interrupt: Interrupt | None = None  # the sender's block (`interrupting`)

    @classmethod
    async def open(
        cls, settings: Settings, channels: int, log: Log, *, pings: Pings = DEFAULT_PINGS
    ) -> DeepgramLink:
        """Open a stream for `channels` of mu-law; raise a `DeepgramError` if refused."""
        if settings.needs_api_key and not settings.deepgram_api_key:
            raise DeepgramNotConfigured(
                "DEEPGRAM_API_KEY is not set: add it to .env or the environment"
            )
        url = listen_url(settings, channels)
        try:
            ws = await connect(
                url,
                additional_headers=auth_headers(settings),
                open_timeout=settings.deepgram_connect_timeout_s,
                ping_interval=pings.interval_s,
                ping_timeout=pings.timeout_s,
                close_timeout=5,
                max_size=_MAX_RESULT_BYTES,
                compression=None,  # mu-law does not compress; deflate would only cost CPU
                # Results are published from the socket callback that reads them: no task
                # wake-up between Deepgram and the watchers' queues (see `receiving`).
                create_connection=(
                    DirectClientConnection if settings.direct_receive else ClientConnection
                ),
            )
        except InvalidStatus as exc:
            response = exc.response
            detail = response.headers.get("dg-error") or response.body.decode(errors="replace")
            raise DeepgramRefused(
                response.status_code, detail.strip(), response.headers.get("dg-request-id", "")
            ) from None
        except (OSError, TimeoutError, InvalidHandshake) as exc:
            raise DeepgramUnavailable(f"cannot reach {settings.deepgram_url}: {exc!r}") from None
        request_id = ws.response.headers.get("dg-request-id", "-") if ws.response else "-"
        forget_handshake_headers(ws)  # 3 KB per call, never read again
        log.info("Deepgram stream open: %d channel(s), request %s", channels, request_id)
        return cls(ws, settings, log)

    async def send_audio(self, data: bytes) -> None:
        """Send one chunk of (interleaved) mu-law; never an empty frame."""
        if data:
            await self._send(data)

    def write_audio_now(self, data: bytes) -> bool:
        """Write one chunk at once, as `send_audio` would when the socket's buffer is not
        full, without a coroutine; False (nothing written) when it is full, closing, or a
        send is under way: then `send_audio` it."""
        ws = self._ws
        protocol = ws.protocol
        if ws.paused or ws.send_in_progress is not None or protocol.state is not State.OPEN:
            return False
        if self._closing or not data:
            return False
        protocol.send_binary(data)
        try:
            ws.send_data()
        except Exception:  # noqa: BLE001 - as websockets' send: the connection is lost
            self._log.debug("writing to Deepgram failed", exc_info=True)
            ws.transport.abort()  # the receiving side reports it; the chunk may be lost
        return True

    async def keepalive(self) -> None:
        """Tell Deepgram the stream is alive while no audio flows."""
        await self._send(KEEPALIVE)

    async def finish(self) -> None:
        """Send CloseStream and wait (bounded) for Deepgram to send the rest and close."""
        await self._send(CLOSE_STREAM)
        self._closing = True
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._ws.wait_closed()
        except TimeoutError:
            self._log.warning(
                "Deepgram did not close within %.1f s of CloseStream", self._close_timeout
            )
            await self.close()

    def publishing(self, publish: Callable[[str], None]) -> AbstractAsyncContextManager[None]:
        """Within the block, pass every message from Deepgram to `publish`, times shifted by
        `offset_s`, as it arrives."""
        self._publish = publish
        # raw: with DIRECT_RECEIVE off too, any message is published whatever its kind or its
        # UTF-8, as the direct path does.
        return receiving(self._ws, self, raw=True)

    def interrupting(self) -> Interrupt:
        """A block that raises the stream's failure (`failure()`) as soon as the stream ends
        with one, cancelling what it awaits: for the sender, which runs in the call's task
        (a task waiting for the stream's end, and a task group, cost 2 KB per call)."""
        self._interrupt = Interrupt()
        self._ended.add_done_callback(self._interrupt_on_failure)
        return self._interrupt

    async def ended(self) -> None:
        """Return once the stream is closed after `finish()`; raise its `failure()` if it
        had one (`DeepgramClosed` if it closed before)."""
        await self._ended
        failure = self.failure()
        if failure is not None:
            raise failure
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        if code not in (1000, None):
            self._log.warning("Deepgram closed with %s %s after CloseStream", code, reason)

    def failure(self) -> Exception | None:
        """Once the stream has ended, why it failed: the bug publishing met (`publish`
        raised), `DeepgramClosed` if it closed before `finish()`; else None."""
        if self._error is not None:
            return self._error
        if not self._closing:
            return DeepgramClosed(self._ws.close_code, self._ws.close_reason or "")
        return None

    def _interrupt_on_failure(self, ended: asyncio.Future[None]) -> None:
        # A callback of `_ended`, as a task awaiting it would wake: `_closing` is read then.
        failure = self.failure()
        if failure is not None and self._interrupt is not None:
            self._interrupt.fail(failure)

    # The connection's MessageSink (`receiving`): never raising.

    def message(self, data: bytes | str, text: bool) -> None:
        """One message from Deepgram: publish it (its JSON is text; anything else, as text
        too, for whoever watches)."""
        if self._error is not None:
            return
        try:
            message = data if isinstance(data, str) else data.decode(errors="replace")
            self._publish(shift_times(message, self.offset_s) if self.offset_s else message)
        except Exception as exc:  # noqa: BLE001 - a bug: `failure()`, raised in the call's task
            self._error = exc
            self._end()
            self._ws.transport.abort()

    def closed(self) -> None:
        """The stream's connection is closed."""
        self._end()

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)

    async def close(self) -> None:
        """Close the stream now (idempotent)."""
        self._closing = True
        await self._ws.close()

    async def _send(self, message: str | bytes) -> None:
        try:
            await self._ws.send(message)
        except ConnectionClosed:
            # The receiving side reports why; sending more is pointless.
            if not self._closing:
                raise DeepgramClosed(self._ws.close_code, self._ws.close_reason or "") from None


class DeepgramSession:
    """The Deepgram side of one call: every chunk of `audio` goes to Deepgram once, across
    as many streams as it takes; every result reaches `publish` on the call's timeline."""

    __slots__ = (
        "audio",
        "backoff",
        "bytes_per_s",
        "channels",
        "log",
        "observer",
        "on_reconnect",
        "pings",
        "publish",
        "results",
        "sent_bytes",
        "settings",
        "streams",
    )

    def __init__(
        self,
        settings: Settings,
        channels: int,
        audio: AudioBuffer,
        publish: Callable[[str], None],
        log: Log,
        *,
        pings: Pings = DEFAULT_PINGS,
        observer: Observer = NO_OBSERVER,
    ) -> None:
        self.settings = settings
        self.pings = pings
        self.observer = observer
        self.channels = channels
        self.audio = audio
        self.publish = publish
        self.log = log
        self.bytes_per_s = 8000 * channels
        self.backoff = Backoff(settings.deepgram_retry_attempts, settings.deepgram_retry_window_s)
        self.streams = 0
        self.sent_bytes = 0
        self.results = 0
        self.on_reconnect: Callable[[], None] = _nothing

    async def run(self) -> None:
        """Stream until the audio ends and Deepgram has sent its last results.

        Raises the `DeepgramError` that ended it: not retryable, or the budget spent."""
        loop = asyncio.get_running_loop()
        attempt, outage_start = 0, 0.0
        last_failure: DeepgramFailure = "closed"
        while True:
            asked = time.monotonic()
            try:
                link = await DeepgramLink.open(
                    self.settings, self.channels, self.log, pings=self.pings
                )
            except DeepgramError as exc:
                failure: DeepgramError | None = exc
                lived = 0.0
            else:
                self.observer.deepgram_opened(time.monotonic() - asked)
                if self.streams:
                    self.on_reconnect()
                    self.observer.deepgram_reconnected(last_failure)
                    self.log.info(
                        "Deepgram stream reopened after %.1f s; %.1f s of audio waiting",
                        loop.time() - outage_start,
                        self.audio.held_bytes / self.bytes_per_s,
                    )
                self.streams += 1
                opened = loop.time()
                failure = await self._stream(link)
                lived = loop.time() - opened
            if failure is None:
                return
            last_failure = deepgram_failure(failure)
            self.observer.deepgram_failed(last_failure)
            if attempt == 0 or lived >= STABLE_STREAM_S:
                attempt, outage_start = 0, loop.time()
            attempt += 1
            await self._wait_to_retry(failure, attempt, loop.time() - outage_start)

    async def _stream(self, link: DeepgramLink) -> DeepgramError | None:
        """Send the call's audio on one stream until it closes, its results published as
        they arrive; the error that ended it, or None. The sender runs in this task, and
        the stream's failure interrupts it (`DeepgramLink.interrupting`)."""
        failure: DeepgramError | None = None
        try:
            async with link.publishing(self._publish):
                with link.interrupting():
                    await self.deepgram_sender(link)
                await link.ended()
        except* DeepgramError as group:
            failure = next(e for e in group.exceptions if isinstance(e, DeepgramError))
        finally:
            await link.close()
        return failure

    async def _wait_to_retry(self, failure: DeepgramError, attempt: int, outage_s: float) -> None:
        """Sleep before the next attempt, or raise `failure` when retrying cannot help."""
        if not is_retryable(failure):
            raise failure
        if self.backoff.gives_up(attempt, outage_s):
            self.log.error(
                "giving up on Deepgram after %d attempt(s), %.1f s", attempt - 1, outage_s
            )
            raise failure
        delay = self.backoff.delay(attempt, random.random())
        self.log.warning(
            "%s; reconnecting in %.2f s (attempt %d of %d)",
            failure,
            delay,
            attempt,
            self.backoff.max_attempts,
        )
        await asyncio.sleep(delay)

    async def deepgram_sender(self, link: DeepgramLink) -> None:
        """Send the waiting audio (no faster than Deepgram takes a backlog), KeepAlive after
        KEEPALIVE_INTERVAL without any, and CloseStream once the call's audio has ended.

        Once the first chunk is sent and nothing is waiting, each chunk the call puts is
        written at once, in the step that mixed it (`AudioBuffer.direct`); this task then
        only wakes for a backlog (a full socket buffer, a reconnect), the end, or KeepAlive.
        """
        loop = asyncio.get_running_loop()
        now = loop.time()
        stream = _StreamSend(self, link, loop, now, last=now)
        # Only a reopened stream starts with a backlog worth pacing; the first one's is what
        # waited while it opened, and pacing it would slow down tests and fast simulations.
        pace = self.streams > 1
        direct: DirectSend | None = None  # from the second chunk on
        while True:
            chunk = await self._next_chunk(link, stream, direct)
            if chunk is None:
                await link.finish()
                return
            if direct is None:  # this stream's time 0: this chunk's place on the timeline
                link.offset_s = chunk.position / self.bytes_per_s
                direct = stream.send_now
            try:
                if pace and (wait := replay_wait(stream.sent_s, loop.time() - stream.started)):
                    await asyncio.sleep(wait)
                await link.send_audio(chunk.data)
            except BaseException:
                self.audio.put_back(chunk)  # not sent: it goes first on the next stream
                raise
            self._sent(chunk, stream, loop.time())
            del chunk  # not held while the next is awaited, for the call (1.6 KB)

    async def _next_chunk(
        self, link: DeepgramLink, stream: _StreamSend, direct: DirectSend | None
    ) -> Chunk | None:
        """The next waiting chunk (None once the audio has ended). While none waits, chunks
        go to `direct` as they come, and KeepAlive goes after KEEPALIVE_INTERVAL without
        audio: one timer per wait, not one per chunk."""
        audio, interval, loop = self.audio, self.settings.keepalive_s, stream.loop
        while (chunk := audio.take()) is None and not audio.closed:
            try:
                async with asyncio.timeout_at(stream.last + interval):
                    try:
                        await audio.wait(direct)
                    finally:
                        audio.stop_waiting()
            except TimeoutError:
                if stream.last + interval <= loop.time():
                    await link.keepalive()
                    stream.last = loop.time()
        return chunk

    def _sent(self, chunk: Chunk, stream: _StreamSend, now: float) -> None:
        size = len(chunk.data)
        self.sent_bytes += size
        stream.sent_s += size / self.bytes_per_s
        stream.last = now
        # since 0.0: the mixer's flush at the end, whose frames are not timed.
        waited = time.monotonic() - chunk.since if chunk.since else None
        self.observer.audio_sent(size, waited)

    def _publish(self, text: str) -> None:
        self.results += 1
        self.publish(text)


def _no_publish(text: str) -> None:
    pass


def _nothing() -> None:
    pass


@dataclass(slots=True)
class _StreamSend:
    """What one stream's sender has sent: since `started`, `sent_s` seconds of audio, the
    last message (audio or KeepAlive) at `last` (`loop`'s clock). `send_now` is its direct
    write (see `_next_chunk`)."""

    session: DeepgramSession
    link: DeepgramLink
    loop: asyncio.AbstractEventLoop
    started: float
    last: float
    sent_s: float = 0.0

    def send_now(self, chunk: Chunk) -> bool:
        """Write `chunk` to the stream at once if its socket takes it (a `DirectSend`)."""
        if not self.link.write_audio_now(chunk.data):
            return False
        self.session._sent(chunk, self, self.loop.time())
        return True
