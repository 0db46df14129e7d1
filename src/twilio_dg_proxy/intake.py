"""Everything one /twilio connection sends, handled the moment it arrives.

A `StreamIntake` takes each message from the socket layer (`direct_connection.receiving`,
in the socket callback or, with DIRECT_RECEIVE off, from a task reading `recv()`): it checks
it (`TwilioStream`), places media on the call's timeline (`StereoMixer`) and queues mixed
chunks for Deepgram (`AudioBuffer`), all synchronously, so a call costs one wake-up of its
Deepgram sender per chunk instead of one of a task per message. Tasks only wait for the
moments that need them: `start`, and the end of the stream (`stop`, bad input, a closed
connection). No sockets; the clock is given (it stamps each chunk with the arrival of its
first frame, for the audio latency metric).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .audio_buffer import AudioBuffer
from .exceptions import UnsupportedFrame
from .mixer import StereoMixer
from .twilio_events import Dtmf, Media, Start, Stop, TwilioEvent, TwilioStream, UnknownEvent

Log = logging.Logger | logging.LoggerAdapter[logging.Logger]

_MAX_UNKNOWN_NAMES = 10  # unknown event names warned about, per stream
_NO_NAMES: frozenset[str] = frozenset()  # one for all: an empty set is 0.2 KB


class StreamIntake:
    """One Media Stream's messages, in order: `message()` each, then `closed()`.

    After `start` it owns the call's mixer and audio buffer. It ends at `stop`, at the first
    bad message (kept in `error`, and the audio so far still flushed) or when the connection
    closes; it then flushes the mixer, closes the buffer and ignores anything more.

    It is made at the upgrade and waits for `start` with what an unauthenticated connection
    may hold (issue 11): slots, a future only while a task waits, the rest made at `start`.
    """

    __slots__ = (
        "_chunk_since",
        "_clock",
        "_waiter",
        "audio",
        "buffer_s",
        "chunk_ms",
        "ended",
        "error",
        "log",
        "max_lag_ms",
        "mixer",
        "stream",
        "unknown_count",
        "unknown_names",
    )

    def __init__(
        self,
        *,
        chunk_ms: int,
        max_lag_ms: int,
        buffer_s: float,
        log: Log,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chunk_ms = chunk_ms
        self.max_lag_ms = max_lag_ms
        self.buffer_s = buffer_s
        self.log = log  # the caller may swap in the call's own once it knows the callSid
        self.stream = TwilioStream()
        self.mixer: StereoMixer | None = None
        self.audio: AudioBuffer | None = None
        self.error: Exception | None = None  # a bad message (ProxyError) or a bug
        self.ended = False  # stop, error or closed connection: nothing more is taken
        self.unknown_count = 0  # unknown events ignored
        self.unknown_names = _NO_NAMES  # those warned about (replaced, not added to)
        # What a task waits on, done at `start` and at the end (`waiter`): a future, made
        # when it waits; an asyncio.Event cost 0.8 KB per connection (its deque).
        self._waiter: asyncio.Future[None] | None = None
        self._clock = clock
        self._chunk_since = 0.0  # when the first frame of the chunk being filled arrived

    @property
    def start(self) -> Start | None:
        """The stream's `start`, once it came."""
        return self.stream.start

    @property
    def stopped(self) -> bool:
        """Twilio said `stop`."""
        return self.stream.stopped

    def message(self, data: bytes | str, text: bool) -> None:
        """Take one message (a text message, as str or UTF-8 bytes, or a binary message)."""
        if self.ended:
            return
        try:
            if not text:
                raise UnsupportedFrame("binary frames are not part of the Media Streams protocol")
            stream = self.stream
            # ~100 media messages per second per call: Twilio's own layout first, read
            # without a JSON parser or an event object; anything else the whole way.
            media = stream.media(data)
            if media is None:
                event = stream.receive(data)
                if type(event) is not Media:
                    self._other(event)
                    return
                media = event.track, event.timestamp_ms, event.payload
            mixer, audio = self.mixer, self.audio
            assert mixer is not None and audio is not None  # TwilioStream: after start
            if not self._chunk_since:  # one clock read per chunk, not per frame
                self._chunk_since = self._clock()
            if mixer.push(*media):  # a chunk may be ready (one push in five, at 100 ms)
                since = self._chunk_since
                for chunk in mixer.pop_chunks():
                    audio.put(chunk, since)
                    self._chunk_since = 0.0
        except Exception as exc:  # noqa: BLE001 - a ProxyError or a bug: the call's task decides
            self.error = exc
            self._end()

    def _other(self, event: TwilioEvent) -> None:
        """Any event but media."""
        if type(event) is Start:
            self._open(event)
        elif type(event) is Stop:
            self._end()
        elif type(event) is Dtmf:
            # Digits can be card numbers or PINs: not at INFO.
            self.log.debug("DTMF %s on %s", event.digit, event.track)
        elif type(event) is UnknownEvent:
            self._note_unknown(event.name)

    def closed(self) -> None:
        """The connection closed: end the stream if it has not ended yet."""
        if not self.ended:
            self._end()

    def waiter(self) -> asyncio.Future[None]:
        """A future done (with None) at the stream's `start` or end, whichever comes next:
        for one task at a time to await (a later call replaces it)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        return waiter

    async def wait_for_start(self) -> Start | None:
        """The stream's `start`, or None if the stream ended first."""
        while self.start is None and not self.ended:
            await self.waiter()
        return self.start

    async def wait_for_end(self) -> None:
        """Return once the stream has ended."""
        while not self.ended:
            await self.waiter()

    def _open(self, start: Start) -> None:
        self.mixer = mixer = StereoMixer(
            start.tracks, chunk_ms=self.chunk_ms, max_lag_ms=self.max_lag_ms
        )
        # Filled as fast as Twilio sends audio (real time), emptied as fast as Deepgram takes
        # it; it only grows while Deepgram is unreachable, and never beyond its bound.
        self.audio = AudioBuffer(max_bytes=int(self.buffer_s * 8000 * mixer.channels))
        self._wake()

    def _end(self) -> None:
        self.ended = True
        self._wake()
        if self.mixer is not None and self.audio is not None:
            try:
                self.audio.put(self.mixer.flush())
            except Exception as exc:  # noqa: BLE001 - a bug: kept for the call's task
                self.error = self.error or exc
            self.audio.close()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():  # (cancelled with its task)
            waiter.set_result(None)

    def _note_unknown(self, name: str) -> None:
        """Count it; warn once per name, for the first few names (a peer could make up
        endless names: neither memory nor the log may grow with them)."""
        self.unknown_count += 1
        if name in self.unknown_names or len(self.unknown_names) > _MAX_UNKNOWN_NAMES:
            return
        self.unknown_names |= {name}  # at most 11 names
        if len(self.unknown_names) > _MAX_UNKNOWN_NAMES:
            self.log.warning("ignoring more unknown Twilio events (not named here)")
        else:
            self.log.warning("ignoring unknown Twilio event %r", name)
