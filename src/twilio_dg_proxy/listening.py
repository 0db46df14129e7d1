"""What the project's local Deepgram-protocol servers (the offline engine and the fake)
share: a websockets server on a host and port, its URL, and stopping it."""

from __future__ import annotations

from websockets.asyncio.server import Server

__all__ = ["LISTEN_PATH", "Listening", "bound_port"]

LISTEN_PATH = "/v1/listen"  # Deepgram's live-transcription path


def bound_port(server: Server) -> int:
    """The TCP port `server` listens on (useful with port 0)."""
    return int(server.sockets[0].getsockname()[1])


class Listening:
    """A Deepgram-protocol server a subclass starts (in `__aenter__`, into `_server`)."""

    def __init__(self, host: str) -> None:
        self.host = host
        self._server: Server | None = None

    @property
    def port(self) -> int:
        """The TCP port it listens on (only while started)."""
        if self._server is None:
            raise RuntimeError(f"{type(self).__name__} is not started")
        return bound_port(self._server)

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/v1/listen`` (only while started): what to set DEEPGRAM_URL to."""
        return f"ws://{self.host}:{self.port}{LISTEN_PATH}"

    async def _stop_serving(self) -> None:
        """Close every connection and stop listening; return once all handlers ended."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            await server.wait_closed()
