"""The start-up check of Deepgram (or the offline engine): one cheap authenticated request.

`GET /v1/auth/token` beside DEEPGRAM_URL's listen path, with the key the streams use.
Deepgram's docs ("Authenticating") give it as the way to test a key: it answers the key's
details, or 401 for invalid credentials. Every key can make it, whatever its scopes, so a
key allowed to stream is never refused by it (`/v1/projects` needs a key that may read the
project, which a key scoped for streaming alone may not). The local engines answer it too
(`listening.py`); a server without it (404) is reachable but cannot vouch for the key.
"""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Literal

from .config import Settings
from .deepgram_protocol import auth_headers, token_url

Outcome = Literal["ok", "unverified", "refused", "unreachable", "unconfigured"]


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
    """Make the request (in a thread: urllib blocks), within DEEPGRAM_CONNECT_TIMEOUT."""
    if settings.needs_api_key and not settings.deepgram_api_key:
        return CheckResult("unconfigured", "DEEPGRAM_API_KEY is not set")
    url = token_url(settings.deepgram_url)
    return await asyncio.to_thread(
        _get, url, auth_headers(settings), settings.deepgram_connect_timeout_s
    )


def _get(url: str, headers: dict[str, str], timeout_s: float) -> CheckResult:
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        return _judge(url, exc.code, exc.headers.get("dg-error") or exc.reason)
    except (OSError, ValueError) as exc:  # URLError, refused, reset, TLS, timeout
        return CheckResult("unreachable", f"cannot reach Deepgram at {url}: {exc}")
    return CheckResult("ok", f"Deepgram at {url} accepts the key")


def _judge(url: str, status: int, why: object) -> CheckResult:
    """An HTTP error status: the key refused (401/403), a server that cannot check keys
    (404/405: it answered, so it is reachable), or a server in trouble (5xx)."""
    if status in (401, 403):
        return CheckResult("refused", f"Deepgram at {url} refused the key: HTTP {status}: {why}")
    if status in (404, 405):
        return CheckResult("unverified", f"{url} answered {status}: reachable, key not checked")
    if status >= 500:
        return CheckResult("unreachable", f"Deepgram at {url} answered HTTP {status}: {why}")
    return CheckResult("unverified", f"{url} answered {status}: reachable, key not checked")
