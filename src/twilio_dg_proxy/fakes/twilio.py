"""A simulated Twilio call: Media Streams messages built exactly as Twilio sends them.

`SimulatedCall` builds the JSON text of one stream (pure); `play` sends such a script over a
real WebSocket, in real time or as fast as possible.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from websockets.asyncio.client import connect

from ..twilio_events import Track

__all__ = ["FRAME_BYTES", "FRAME_MS", "SILENCE", "SimulatedCall", "pattern", "play"]

#: Bytes of mu-law in one Twilio media message (20 ms at 8 kHz).
FRAME_BYTES = 160
#: Milliseconds of audio in one media message.
FRAME_MS = 20
#: Mu-law silence (positive zero).
SILENCE = 0xFF

_TRACK_ORDER: dict[Track, int] = {"inbound": 0, "outbound": 1}


def _sid(prefix: str) -> str:
    return prefix + secrets.token_hex(16)


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

    def stop(self) -> str:
        """Return the `stop` message, the last of a stream."""
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
) -> None:
    """Connect to `url` as Twilio would, send `messages`, then close normally.

    With `realtime`, each message goes out at its send time, measured from the connection
    (late messages go at once, so delays never accumulate); otherwise as fast as possible.
    """
    loop = asyncio.get_running_loop()
    async with connect(url, proxy=None, additional_headers=additional_headers) as websocket:
        origin = loop.time()
        for send_time, message in messages:
            if realtime:
                delay = origin + send_time - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            await websocket.send(message)
