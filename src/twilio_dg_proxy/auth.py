"""Who may open /twilio and /client: Twilio's request signature, a stream secret, client
tokens. Pure checks on what the upgrade request or the `start` message carries; the server
applies them and answers 401/403 or closes with 1008.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers

from .config import Settings
from .exceptions import ConfigError

SIGNATURE_HEADER = "X-Twilio-Signature"
SECRET_PARAMETER = "secret"

SignatureCheck = Callable[[str], bool]


def twilio_signature_check(settings: Settings) -> SignatureCheck | None:
    """A check of `X-Twilio-Signature` values for the configured URL, or None when
    TWILIO_AUTH_TOKEN is unset. Needs the `twilio` package (the `twilio` extra)."""
    if not settings.twilio_auth_token:
        return None
    try:
        from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
    except ImportError:
        raise ConfigError(
            "TWILIO_AUTH_TOKEN", "needs the twilio package: pip install 'twilio-dg-proxy[twilio]'"
        ) from None
    validator = RequestValidator(settings.twilio_auth_token)
    url = settings.twilio_stream_url

    def check(signature: str) -> bool:
        # Twilio signs the exact wss:// URL of <Stream url> with no parameters; the
        # validator's comparison is constant-time.
        return bool(signature) and bool(validator.validate(url, {}, signature))

    return check


def token_of(path: str, headers: Headers) -> str:
    """The client's token: `Authorization: Bearer <token>`, else `?token=` (browsers cannot
    set headers on a WebSocket); "" if neither."""
    scheme, _, value = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    values = parse_qs(urlsplit(path).query).get("token", [])
    return values[0] if values else ""


def token_allowed(token: str, tokens: Sequence[str]) -> bool:
    """Whether `token` is one of `tokens`, comparing every one in constant time."""
    found = False
    for candidate in tokens:
        found |= hmac.compare_digest(token.encode(), candidate.encode())
    return found


def secret_matches(parameters: Mapping[str, str], secret: str) -> bool:
    """Whether the stream's `secret` custom parameter is `secret` (constant time)."""
    return hmac.compare_digest(parameters.get(SECRET_PARAMETER, "").encode(), secret.encode())


def redacted(parameters: Mapping[str, str]) -> dict[str, str]:
    """Custom parameters fit for a log line: the stream secret hidden."""
    return {k: ("<hidden>" if k == SECRET_PARAMETER else v) for k, v in parameters.items()}


def unauthenticated_endpoints(settings: Settings) -> list[str]:
    """The endpoints anyone who can reach the server may use, for a start-up warning."""
    endpoints = []
    if not (settings.twilio_auth_token or settings.twilio_stream_secret):
        endpoints.append("/twilio (set TWILIO_AUTH_TOKEN and PUBLIC_URL, or TWILIO_STREAM_SECRET)")
    if not settings.client_tokens:
        endpoints.append("/client and /calls (set CLIENT_TOKENS)")
    return endpoints
