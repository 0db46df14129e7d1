"""The call simulator: Twilio Media Streams messages built exactly as Twilio sends them.

Product tooling, not a test double: the `simulate` command, the benchmark's load generator and
the tests all play calls with it. `SimulatedCall` builds the JSON text of one stream (pure;
`MediaTemplate` renders a track's media messages fast, `pattern` makes audio that tells the
tracks apart); `play` sends such a script over a real WebSocket, in real time or as fast as
possible.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import connect
from websockets.frames import Close

from .twilio_events import Track

__all__ = [
    "FRAME_BYTES",
    "FRAME_MS",
    "SILENCE",
    "MediaTemplate",
    "SimulatedCall",
    "pattern",
    "play",
]

#: Bytes of mu-law in one Twilio media message (20 ms at 8 kHz).
FRAME_BYTES = 160
#: Milliseconds of audio in one media message.
FRAME_MS = 20
#: Mu-law silence (positive zero).
SILENCE = 0xFF

_TRACK_ORDER: dict[Track, int] = {"inbound": 0, "outbound": 1}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


# Values that `media_template` passes to `media()` to find where each field lands in its text:
# digits no SID can plausibly hold at that length, and bytes whose base64 is all "+".
_MARK_SEQUENCE = 7_340_000_001
_MARK_CHUNK = 7_340_000_002
_MARK_TIMESTAMP = 7_340_000_003
_MARK_PAYLOAD = bytes.fromhex("fbefbe") * 4


@dataclass(frozen=True, slots=True)
class MediaTemplate:
    """One track's `media` message with the fields that change per frame left open.

    Made by `SimulatedCall.media_template` from `media()`'s own output, so `render` returns the
    very text `media()` would, without building and serialising a dict: for load generators
    that send thousands of frames a second. Rendering does not advance the call's counters.
    """

    parts: tuple[str, str, str, str, str]  # the text around sequence, chunk, timestamp, payload

    def render(self, *, sequence: int, chunk: int, timestamp_ms: int, payload_b64: str) -> str:
        """Return the `media` message with these values (`payload_b64`: base64 of the audio)."""
        p = self.parts
        return f"{p[0]}{sequence}{p[1]}{chunk}{p[2]}{timestamp_ms}{p[3]}{payload_b64}{p[4]}"


@dataclass
class SimulatedCall:
    """One Media Stream as Twilio would send it.

    Each method returns the JSON text of one message and advances the counters:
    `sequenceNumber` counts every message after `connected` from 1, `media.chunk` counts per track
    from 1. Call `connected()` and `start()` first, as Twilio does (or use `script`).
    """

    call_sid: str = field(default_factory=lambda: _sid("CA"))
    stream_sid: str = field(default_factory=lambda: _sid("MZ"))
    account_sid: str = field(default_factory=lambda: _sid("AC"))
    tracks: tuple[Track, ...] = ("inbound", "outbound")
    custom_parameters: dict[str, str] = field(default_factory=dict)
    _sequence: int = field(default=0, init=False, repr=False)
    _chunks: dict[Track, int] = field(default_factory=dict, init=False, repr=False)

    def _next_sequence(self) -> str:
        self._sequence += 1
        return str(self._sequence)

    def connected(self) -> str:
        """Return the `connected` message (no sequence number, no streamSid)."""
        return json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"})

    def start(self) -> str:
        """Return the `start` message announcing `tracks` and `custom_parameters`."""
        return json.dumps(
            {
                "event": "start",
                "sequenceNumber": self._next_sequence(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": list(self.tracks),
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": dict(self.custom_parameters),
                },
                "streamSid": self.stream_sid,
            }
        )

    def media(
        self, track: Track, timestamp_ms: int, payload: bytes, *, chunk: int | None = None
    ) -> str:
        """Return a `media` message; `chunk` defaults to the track's next chunk number."""
        if chunk is None:
            chunk = self._chunks.get(track, 0) + 1
        self._chunks[track] = chunk
        return json.dumps(
            {
                "event": "media",
                "sequenceNumber": self._next_sequence(),
                "media": {
                    "track": track,
                    "chunk": str(chunk),
                    "timestamp": str(timestamp_ms),
                    "payload": base64.b64encode(payload).decode("ascii"),
                },
                "streamSid": self.stream_sid,
            }
        )

    def media_template(self, track: Track) -> MediaTemplate:
        """Return the template of this call's `media` messages on `track` (see `MediaTemplate`)."""
        probe = SimulatedCall(self.call_sid, self.stream_sid, self.account_sid, self.tracks)
        probe._sequence = _MARK_SEQUENCE - 1
        text = probe.media(track, _MARK_TIMESTAMP, _MARK_PAYLOAD, chunk=_MARK_CHUNK)
        parts: list[str] = []
        marks = (_MARK_SEQUENCE, _MARK_CHUNK, _MARK_TIMESTAMP)
        for mark in (*map(str, marks), base64.b64encode(_MARK_PAYLOAD).decode()):
            # Each mark exactly once and in this order, or the template would render wrongly.
            head, found, text = text.partition(mark)
            if not found or mark in head or mark in text:
                raise RuntimeError(f"cannot cut a template from media(): {mark!r} not found once")
            parts.append(head)
        return MediaTemplate((parts[0], parts[1], parts[2], parts[3], text))

    def stop(self, *, sequence: int | None = None) -> str:
        """Return the `stop` message, the last of a stream.

        `sequence` overrides the message counter, for a stream whose media went out through a
        `media_template` (which does not advance it).
        """
        if sequence is not None:
            self._sequence = sequence - 1
        return json.dumps(
            {
                "event": "stop",
                "sequenceNumber": self._next_sequence(),
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
                "streamSid": self.stream_sid,
            }
        )

    def frames(
        self,
        audio: Mapping[Track, bytes],
        *,
        drop: Mapping[Track, Collection[int]] | None = None,
        start_ms: Mapping[Track, int] | None = None,
    ) -> list[tuple[float, str]]:
        """Return `(send_time_s, message)` pairs: `media` messages carrying `audio`, in send order.

        Each track is cut into 160-byte frames, the last one padded with silence; frame `i` of
        track `t` has timestamp `start_ms[t] + 20 * i` and is sent at that time. Frames whose
        index is in `drop[t]` are lost. Tracks are merged by timestamp, inbound first on ties.
        """
        drop = drop or {}
        start_ms = start_ms or {}
        planned: list[tuple[int, int, int, Track, bytes]] = []
        for track, data in audio.items():
            lost = drop.get(track, ())
            origin = start_ms.get(track, 0)
            for i, offset in enumerate(range(0, len(data), FRAME_BYTES)):
                if i in lost:
                    continue
                frame = data[offset : offset + FRAME_BYTES].ljust(FRAME_BYTES, bytes([SILENCE]))
                planned.append((origin + FRAME_MS * i, _TRACK_ORDER[track], i, track, frame))
        planned.sort(key=lambda item: item[:3])
        # A lost packet never reaches Twilio's side of the WebSocket, so sequenceNumber (which
        # counts WebSocket messages) does not skip. We assume `chunk` numbers the packets of the
        # track as timestamps do, so it skips with them: chunk = i + 1 for frame i.
        return [
            (timestamp / 1000, self.media(track, timestamp, frame, chunk=i + 1))
            for timestamp, _, i, track, frame in planned
        ]

    def script(
        self,
        audio: Mapping[Track, bytes],
        *,
        drop: Mapping[Track, Collection[int]] | None = None,
        start_ms: Mapping[Track, int] | None = None,
    ) -> list[tuple[float, str]]:
        """Return the whole stream: `connected` and `start` at 0 s, `frames(...)`, then `stop`.

        `stop` is sent 20 ms after the last frame (at 0.02 s if there is no audio).
        """
        messages = [(0.0, self.connected()), (0.0, self.start())]
        messages += self.frames(audio, drop=drop, start_ms=start_ms)
        messages.append((messages[-1][0] + FRAME_MS / 1000, self.stop()))
        return messages


def pattern(track: Track, n: int, *, offset: int = 0) -> bytes:
    """Return `n` deterministic, non-silent mu-law bytes that tell the tracks apart.

    Inbound bytes lie in 0x00-0x7E, outbound in 0x80-0xFE: never 0x7F or 0xFF (both mu-law zero).
    The period, 127 bytes, is not a divisor of a frame, so shifted frames differ.
    """
    base = 0x00 if track == "inbound" else 0x80
    return bytes(base + (offset + k) % 127 for k in range(n))


async def play(
    url: str,
    messages: Sequence[tuple[float, str]],
    *,
    realtime: bool = True,
    additional_headers: Mapping[str, str] | None = None,
    on_sent: Callable[[int], Awaitable[None]] | None = None,
) -> Close | None:
    """Connect to `url` as Twilio would, send `messages`, then close normally.

    With `realtime`, each message goes out at its send time, measured from the connection
    (late messages go at once, so delays never accumulate); otherwise as fast as possible.
    `on_sent(i)`, if given, is awaited after message `i` is sent; time spent in it pauses the
    schedule (a hook may hold the stream, e.g. until someone is watching the call).

    Returns the close frame the peer sent (None if the connection ended without one): a
    normal end is code 1000. Raises `ConnectionClosed` if the peer closes the connection
    before every message is sent, and what `connect` raises (`OSError`, `InvalidHandshake`,
    `InvalidURI`, `TimeoutError`) if the connection cannot be opened.
    """
    loop = asyncio.get_running_loop()
    async with connect(url, proxy=None, additional_headers=additional_headers) as websocket:
        origin = loop.time()
        for index, (send_time, message) in enumerate(messages):
            if realtime:
                delay = origin + send_time - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await websocket.send(message)
            if on_sent is not None:
                held_from = loop.time()
                await on_sent(index)
                origin += loop.time() - held_from
    return websocket.protocol.close_rcvd
