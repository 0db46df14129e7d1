"""The pure half of the Deepgram link: the listen URL, its headers and control messages."""

from __future__ import annotations

from urllib.parse import urlencode

from .config import Settings

# Control messages are JSON text frames. Never send an empty binary frame: it is the
# deprecated end-of-stream signal and makes Deepgram close unexpectedly.
KEEPALIVE = '{"type":"KeepAlive"}'
FINALIZE = '{"type":"Finalize"}'
CLOSE_STREAM = '{"type":"CloseStream"}'


def listen_url(settings: Settings, channels: int) -> str:
    """The URL that opens a stream for `channels` of 8 kHz mu-law (1, or 2 interleaved).

    The audio format comes from the call; the user's options (defaults merged with
    DEEPGRAM_PARAMS) come after it."""
    audio = {"encoding": "mulaw", "sample_rate": "8000", "channels": str(channels)}
    if channels > 1:
        audio["multichannel"] = "true"
    return f"{settings.deepgram_url}?{urlencode(audio | settings.listen_params())}"


def auth_headers(settings: Settings) -> dict[str, str]:
    """The upgrade's headers: `Authorization: Token <key>` when a key is configured."""
    if not settings.deepgram_api_key:
        return {}
    return {"Authorization": f"Token {settings.deepgram_api_key}"}
