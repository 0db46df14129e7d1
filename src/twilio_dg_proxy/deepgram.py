"""The Deepgram link's I/O: open a live stream, send audio and control messages, read results.

The pure parts (URL, headers, control messages) are in `deepgram_protocol.py`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from .config import Settings
from .deepgram_protocol import CLOSE_STREAM, KEEPALIVE, auth_headers, listen_url
from .exceptions import DeepgramClosed, DeepgramRefused, DeepgramUnavailable

# Deepgram's messages are small JSON; a megabyte is generous and still bounds memory.
_MAX_RESULT_BYTES = 1 << 20


class DeepgramLink:
    """One live-transcription stream. Audio and control go out; results come back."""

    def __init__(
        self, ws: ClientConnection, settings: Settings, log: logging.LoggerAdapter[logging.Logger]
    ) -> None:
        self._ws = ws
        self._close_timeout = settings.deepgram_close_timeout_s
        self._log = log
        self._closing = False  # True once CloseStream is sent: a close is then expected
        self.audio_bytes = 0
        self.results = 0

    @classmethod
    async def open(
        cls, settings: Settings, channels: int, log: logging.LoggerAdapter[logging.Logger]
    ) -> DeepgramLink:
        """Open a stream for `channels` of mu-law; raise a `DeepgramError` if refused."""
        if settings.needs_api_key and not settings.deepgram_api_key:
            raise DeepgramUnavailable(
                "DEEPGRAM_API_KEY is not set: add it to .env or the environment"
            )
        url = listen_url(settings, channels)
        try:
            ws = await connect(
                url,
                additional_headers=auth_headers(settings),
                open_timeout=settings.deepgram_connect_timeout_s,
                max_size=_MAX_RESULT_BYTES,
                close_timeout=5,
                compression=None,  # mu-law does not compress; deflate would only cost CPU
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
        log.info("Deepgram stream open: %d channel(s), request %s", channels, request_id)
        return cls(ws, settings, log)

    async def send_audio(self, chunk: bytes) -> None:
        """Send one chunk of (interleaved) mu-law; never an empty frame."""
        if chunk:
            await self._send(chunk)
            self.audio_bytes += len(chunk)

    async def keepalive(self) -> None:
        """Tell Deepgram the stream is alive while no audio flows."""
        await self._send(KEEPALIVE)

    async def finish(self) -> None:
        """Send CloseStream and wait (bounded) for Deepgram to send the rest and close."""
        self._closing = True
        await self._send(CLOSE_STREAM)
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._ws.wait_closed()
        except TimeoutError:
            self._log.warning(
                "Deepgram did not close within %.1f s of CloseStream", self._close_timeout
            )
            await self.close()

    async def forward_results(self, publish: Callable[[str], None]) -> None:
        """Pass every message from Deepgram to `publish` until the stream closes.

        Returns when it closes after `finish()`; raises `DeepgramClosed` otherwise."""
        try:
            async for message in self._ws:
                self.results += 1
                publish(message if isinstance(message, str) else message.decode(errors="replace"))
        except ConnectionClosed:
            pass  # read the code and reason below, whichever way it closed
        code, reason = self._ws.close_code, self._ws.close_reason or ""
        if not self._closing:
            raise DeepgramClosed(code, reason)
        if code not in (1000, None):
            self._log.warning("Deepgram closed with %s %s after CloseStream", code, reason)

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
