"""The tutorial's design, rebuilt for the benchmark: what `bench --baseline` measures the proxy
against, in the same run and with the same load.

Source: Deepgram's tutorial "Transcribing Twilio Voice Calls in Real-Time with Deepgram"
(deepgram.com/learn/deepgram-twilio-streaming) and its code, the single file ``twilio.py`` of
github.com/deepgram-devs/deepgram-twilio-streaming-python (read at commit 8da9efd). This is
written from that design, not copied. What it keeps, on every path the load exercises:

- websockets' ``recv()`` path: ``async for message in ws`` on /twilio and on Deepgram's
  stream, and a general ``json.loads`` of every Twilio message; asyncio's own event loop.
- Frames paired on arrival: each track's payloads appended to a buffer of its own; when both
  buffers hold ``BUFFER_SIZE`` (20 frames of 160 bytes: 400 ms) they are mixed and sent. No
  shared timeline; per track, a gap in `timestamp` is filled with mu-law silence (0xFF) as the
  tutorial does (the benchmark's load loses no frame, so this never runs there).
- Mixing with pydub: an ``AudioSegment`` per track from the raw mu-law bytes
  (``sample_width=1, frame_rate=8000, channels=1``), ``AudioSegment.from_mono_audiosegments``,
  and its ``raw_data`` put on an unbounded ``asyncio.Queue`` that a sender task drains into
  the Deepgram socket.
- One unbounded ``asyncio.Queue`` per /client watcher and a task forwarding it; every
  Deepgram message is put on every watcher's queue of its call.

What it changes, none on the per-message path, each so that the benchmark can measure it:

- websockets' current asyncio API (the tutorial's legacy API is deprecated), with its
  defaults as the tutorial had them.
- The end of a call: the tutorial drops what is left in the buffers (up to 380 ms) and sends
  an empty binary frame, which Deepgram now answers with a closure (and the fake, like it, with
  1011 and no final results). Here the rest is mixed and sent, then ``CloseStream``, so the
  benchmark's every-byte and every-result checks apply unchanged; the sender then ends (the
  tutorial's waits forever).
- Watchers get the text ``close`` before the normal close (the tutorial's sender stops on it
  without sending it; the /client protocol of this project sends it).
- ``GET /healthz`` answers ``{"calls": ..., "subscribers": ...}`` (the benchmark waits for
  every call and watcher), SIGTERM stops it, and a task group owns each handler's tasks.

Run as ``python -m twilio_dg_proxy.commands.bench.tutorial_baseline --port 0``, with
``DEEPGRAM_URL`` (required), ``DEEPGRAM_API_KEY`` and ``DEEPGRAM_PARAMS`` (extra query, e.g.
``interim_results=false``) from the environment; it logs ``listening on ws://HOST:PORT``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Mapping
from http import HTTPStatus
from typing import Final
from urllib.parse import parse_qsl, urlencode

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from ...audio import AudioSegment

__all__ = ["BUFFER_MS", "BUFFER_SIZE", "Baseline", "deepgram_url", "main", "mix"]

#: The tutorial's buffer: 20 Twilio messages of 160 bytes per track, 400 ms.
BUFFER_SIZE: Final = 20 * 160
BUFFER_MS: Final = BUFFER_SIZE // 8
_SILENCE: Final = b"\xff"  # mu-law silence; 8 bytes per ms at 8 kHz
_AUDIO_QUERY: Final = {
    "encoding": "mulaw",
    "sample_rate": "8000",
    "channels": "2",
    "multichannel": "true",
}
_CLOSE_STREAM: Final = json.dumps({"type": "CloseStream"})

log = logging.getLogger("twilio_dg_proxy.bench.tutorial_baseline")


def deepgram_url(base: str, params: str = "") -> str:
    """`base` with the tutorial's audio query, then `params` (``name=value&...``) on top."""
    return f"{base}?{urlencode(_AUDIO_QUERY | dict(parse_qsl(params)))}"


def mix(inbound: bytes | bytearray, outbound: bytes | bytearray) -> bytes:
    """The two tracks' mu-law bytes as stereo (inbound left), mixed as the tutorial mixes
    them: a pydub `AudioSegment` per track, then `from_mono_audiosegments`."""
    left = AudioSegment(inbound, sample_width=1, frame_rate=8000, channels=1)
    right = AudioSegment(outbound, sample_width=1, frame_rate=8000, channels=1)
    mixed: bytes = AudioSegment.from_mono_audiosegments(left, right).raw_data
    return mixed


class _Track:
    """One track's buffer and the last timestamp seen, for the tutorial's gap filling."""

    __slots__ = ("buffer", "latest")

    def __init__(self) -> None:
        self.buffer = bytearray()
        self.latest: int | None = None

    def add(self, timestamp: int, chunk: bytes) -> None:
        """Append `chunk`, after silence for any time skipped since the last one."""
        if self.latest is not None and self.latest + 20 < timestamp:
            self.buffer.extend(_SILENCE * (8 * (timestamp - (self.latest + 20))))
        self.latest = timestamp
        self.buffer.extend(chunk)


class Baseline:
    """The server: /twilio calls, /client watchers, their queues by callSid."""

    def __init__(self, deepgram_url: str, api_key: str = "") -> None:
        self.deepgram_url = deepgram_url
        self.headers = {"Authorization": f"Token {api_key}"} if api_key else {}
        self.subscribers: dict[str, list[asyncio.Queue[str]]] = {}

    def health(self, ws: ServerConnection, request: Request) -> Response | None:
        """Answer ``GET /healthz``; let every other request upgrade."""
        if request.path != "/healthz":
            return None
        body = {
            "calls": len(self.subscribers),
            "subscribers": sum(map(len, self.subscribers.values())),
        }
        response = ws.respond(HTTPStatus.OK, json.dumps(body))
        response.headers["Content-Type"] = "application/json"
        return response

    async def router(self, ws: ServerConnection) -> None:
        """Route by path, as the tutorial does."""
        if ws.request is not None and ws.request.path == "/client":
            await self.client(ws)
        elif ws.request is not None and ws.request.path == "/twilio":
            await self.twilio(ws)

    async def twilio(self, ws: ServerConnection) -> None:
        """One call: Deepgram opened at once; receive Twilio, send audio, fan results out."""
        audio: asyncio.Queue[bytes | None] = asyncio.Queue()
        call_sid: asyncio.Queue[str | None] = asyncio.Queue()
        async with connect(
            self.deepgram_url, additional_headers=Headers(self.headers), proxy=None
        ) as deepgram:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(self._deepgram_sender(deepgram, audio))
                tasks.create_task(self._deepgram_receiver(deepgram, call_sid))
                tasks.create_task(self._twilio_receiver(ws, audio, call_sid))
        await ws.close()

    @staticmethod
    async def _deepgram_sender(
        deepgram: ClientConnection, audio: asyncio.Queue[bytes | None]
    ) -> None:
        while (chunk := await audio.get()) is not None:
            await deepgram.send(chunk)
        with contextlib.suppress(Exception):  # Deepgram may be gone already
            await deepgram.send(_CLOSE_STREAM)

    async def _deepgram_receiver(
        self, deepgram: ClientConnection, call_sid: asyncio.Queue[str | None]
    ) -> None:
        sid = await call_sid.get()
        if sid is None:
            return
        watchers = self.subscribers[sid] = []
        with contextlib.suppress(Exception):  # as the tutorial: a closed stream ends it
            async for message in deepgram:
                for queue in watchers:
                    queue.put_nowait(str(message))
        for queue in watchers:
            queue.put_nowait("close")
        del self.subscribers[sid]

    @staticmethod
    async def _twilio_receiver(
        ws: ServerConnection,
        audio: asyncio.Queue[bytes | None],
        call_sid: asyncio.Queue[str | None],
    ) -> None:
        inbound, outbound = _Track(), _Track()
        started = False
        try:
            async for message in ws:
                data = json.loads(message)
                event = data["event"]
                if event == "start":
                    started = True
                    call_sid.put_nowait(data["start"]["callSid"])
                elif event == "media":
                    media = data["media"]
                    track = inbound if media["track"] == "inbound" else outbound
                    track.add(int(media["timestamp"]), base64.b64decode(media["payload"]))
                elif event == "stop":
                    break
                while len(inbound.buffer) >= BUFFER_SIZE and len(outbound.buffer) >= BUFFER_SIZE:
                    audio.put_nowait(
                        mix(inbound.buffer[:BUFFER_SIZE], outbound.buffer[:BUFFER_SIZE])
                    )
                    inbound.buffer = inbound.buffer[BUFFER_SIZE:]
                    outbound.buffer = outbound.buffer[BUFFER_SIZE:]
        except Exception:  # the tutorial's bare except: any bad message ends the call
            log.debug("twilio stream ended by an error", exc_info=True)
        rest = min(len(inbound.buffer), len(outbound.buffer))
        if rest:
            audio.put_nowait(mix(inbound.buffer[:rest], outbound.buffer[:rest]))
        audio.put_nowait(None)
        if not started:
            call_sid.put_nowait(None)

    async def client(self, ws: ServerConnection) -> None:
        """One watcher: the call list, a callSid, then its call's messages through a queue."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        await ws.send(json.dumps(list(self.subscribers)))
        try:
            sid = str(await ws.recv()).strip()
        except Exception:
            await ws.close()
            return
        if sid not in self.subscribers:
            await ws.close(reason="unknown callSid")
            return
        watchers = self.subscribers[sid]
        watchers.append(queue)
        while (message := await queue.get()) != "close":
            try:
                await ws.send(message)
            except Exception:
                watchers.remove(queue)
                return
        with contextlib.suppress(Exception):
            await ws.send("close")
        await ws.close()


async def serve_baseline(
    host: str, port: int, env: Mapping[str, str], stop: asyncio.Future[None]
) -> None:
    """Serve until `stop` resolves; log the address it listens on."""
    baseline = Baseline(
        deepgram_url(env["DEEPGRAM_URL"], env.get("DEEPGRAM_PARAMS", "")),
        env.get("DEEPGRAM_API_KEY", ""),
    )
    async with serve(baseline.router, host, port, process_request=baseline.health) as server:
        bound = next(iter(server.sockets)).getsockname()
        log.info("listening on ws://%s:%d", bound[0], bound[1])
        await stop


async def _main(host: str, port: int) -> None:
    loop = asyncio.get_running_loop()
    stop: asyncio.Future[None] = loop.create_future()

    def stopping() -> None:
        if not stop.done():
            stop.set_result(None)

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping)
    await serve_baseline(host, port, os.environ, stop)


def main() -> None:
    """Entry point of the baseline's process."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    if "DEEPGRAM_URL" not in os.environ:
        sys.exit("tutorial_baseline: DEEPGRAM_URL is required")
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    asyncio.run(_main(args.host, args.port))


if __name__ == "__main__":
    main()
