"""The start-up check of Deepgram (or the offline engine): one cheap authenticated request.

`GET /v1/auth/token` beside DEEPGRAM_URL's listen path, with the key the streams use.
Deepgram's docs ("Authenticating") give it as the way to test a key: it answers the key's
details, or 401 for invalid credentials. Every key can make it, whatever its scopes, so a
key allowed to stream is never refused by it (`/v1/projects` needs a key that may read the
project, which a key scoped for streaming alone may not). The local engines answer it too
(`listening.py`); a server without it (404) is reachable but cannot vouch for the key.
The request goes straight to the host (unlike the streams, it ignores HTTPS_PROXY).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

from .config import Settings
from .deepgram_protocol import auth_headers, token_url

Outcome = Literal["ok", "unverified", "refused", "unreachable", "unconfigured"]

# The status line and headers of an answer: more is not an answer from Deepgram.
_MAX_HEAD_BYTES = 16 << 10


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What the check found, and a sentence for the log (never the key)."""

    outcome: Outcome
    detail: str

    @property
    def usable(self) -> bool:
        """Whether calls may be sent to this Deepgram."""
        return self.outcome in ("ok", "unverified")


async def check_deepgram(settings: Settings) -> CheckResult:
    """Make the request, within DEEPGRAM_CONNECT_TIMEOUT, and judge the answer."""
    if settings.needs_api_key and not settings.deepgram_api_key:
        return CheckResult("unconfigured", "DEEPGRAM_API_KEY is not set")
    url = token_url(settings.deepgram_url)
    try:
        async with asyncio.timeout(settings.deepgram_connect_timeout_s):
            status, dg_error = await _get(url, auth_headers(settings))
    except (OSError, TimeoutError, ValueError) as exc:  # refused, reset, TLS, DNS, garbage
        return CheckResult("unreachable", f"cannot reach Deepgram at {url}: {exc!r}")
    return _judge(url, status, dg_error)


async def _get(url: str, headers: dict[str, str]) -> tuple[int, str]:
    """GET `url` over HTTP/1.1 with asyncio's own streams (a thread with urllib would
    outlive a cancelled check); return the status and the `dg-error` header ("" if none).
    Raises OSError or ValueError when no HTTP answer comes."""
    parts = urlsplit(url)
    secure = parts.scheme == "https"
    host = parts.hostname or ""
    reader, writer = await asyncio.open_connection(
        host,
        parts.port or (443 if secure else 80),
        ssl=ssl.create_default_context() if secure else None,
    )
    try:
        lines = [f"GET {parts.path} HTTP/1.1", f"Host: {parts.netloc}", "Connection: close"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        raise ConnectionResetError("the connection closed before an answer") from None
    except asyncio.LimitOverrunError:
        raise ValueError("not an HTTP answer") from None
    finally:
        writer.close()
    if len(head) > _MAX_HEAD_BYTES:
        raise ValueError("not an HTTP answer")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    if not version.startswith("HTTP/") or not rest[:3].isdigit():
        raise ValueError(f"not an HTTP answer: {status_line[:40]!r}")
    dg_error = ""
    for line in header_lines:
        name, _, value = line.partition(":")
        if name.strip().lower() == "dg-error":
            dg_error = value.strip()
    return int(rest[:3]), dg_error


def _judge(url: str, status: int, why: str) -> CheckResult:
    """An HTTP status: the key accepted (2xx) or refused (401/403), a server that cannot check
    keys (404, 405, others: it answered, so it is reachable), or a server in trouble (5xx)."""
    if 200 <= status < 300:
        return CheckResult("ok", f"Deepgram at {url} accepts the key")
    if status in (401, 403):
        reason = f": {why}" if why else ""
        return CheckResult("refused", f"Deepgram at {url} refused the key: HTTP {status}{reason}")
    if status >= 500:
        return CheckResult("unreachable", f"Deepgram at {url} answered HTTP {status}")
    return CheckResult("unverified", f"{url} answered {status}: reachable, key not checked")
