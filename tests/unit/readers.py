"""The one reader's side of `Outbox` and `AudioBuffer`, as the proxy's forwarders and
Deepgram sender take from them (`take`, then `wait` while nothing is there), for tests to
read them in one call."""

from __future__ import annotations

from twilio_dg_proxy.audio_buffer import AudioBuffer, Chunk
from twilio_dg_proxy.hub import Ending, Outbox


async def next_message(outbox: Outbox) -> str | Ending:
    """The next message, or the ending once every message has been taken."""
    while (item := outbox.take()) is None:
        try:
            await outbox.wait()
        finally:
            outbox.stop_waiting()
    return item


async def next_chunk(buffer: AudioBuffer) -> Chunk | None:
    """The oldest waiting chunk; None once the buffer is closed and empty."""
    while (chunk := buffer.take()) is None and not buffer.closed:
        try:
            await buffer.wait()
        finally:
            buffer.stop_waiting()
    return chunk
