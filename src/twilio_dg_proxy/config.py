"""Settings: one frozen object, built once from a mapping of environment variables.

`Settings.from_env(mapping)` validates every value and raises `ConfigError` naming the
variable, so a typo stops start-up instead of failing the first call. Tests pass a dict.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from .exceptions import ConfigError

T = TypeVar("T")
N = TypeVar("N", int, float)

# The proxy decides these from the call's tracks; letting DEEPGRAM_PARAMS change them would
# make Deepgram misread the audio.
AUDIO_FORMAT_PARAMS = frozenset({"encoding", "sample_rate", "channels", "multichannel"})

DEFAULT_DEEPGRAM_PARAMS: tuple[tuple[str, str], ...] = (
    ("model", "nova-3"),
    ("interim_results", "true"),
    ("punctuate", "true"),
    ("smart_format", "true"),
)


def _setting(env: str, default: T, doc: str) -> T:
    """Declare a field read from environment variable `env`; `doc` feeds `.env.example`."""
    return field(default=default, metadata={"env": env, "doc": doc})


def _secret(env: str, default: T, doc: str) -> T:
    """A setting that must never be shown: left out of repr (and so of logs)."""
    return field(default=default, repr=False, metadata={"env": env, "doc": doc})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be told. Field metadata names the environment variable."""

    deepgram_api_key: str = _secret(
        "DEEPGRAM_API_KEY", "", "Deepgram API key (required for Deepgram's cloud)"
    )
    deepgram_url: str = _setting(
        "DEEPGRAM_URL",
        "wss://api.deepgram.com/v1/listen",
        "Deepgram live endpoint (ws:// or wss://)",
    )
    deepgram_params: tuple[tuple[str, str], ...] = _setting(
        "DEEPGRAM_PARAMS", (), "extra query options, merged over the defaults (URL query syntax)"
    )
    host: str = _setting("HOST", "127.0.0.1", "address to listen on (0.0.0.0 for all)")
    port: int = _setting("PORT", 5000, "TCP port to listen on (0 picks a free one)")
    chunk_ms: int = _setting("CHUNK_MS", 100, "milliseconds of audio per message to Deepgram")
    max_track_lag_ms: int = _setting(
        "MAX_TRACK_LAG_MS", 300, "how far one track may run ahead before the other is padded"
    )
    keepalive_s: float = _setting(
        "KEEPALIVE_INTERVAL", 4.0, "seconds without audio before a KeepAlive goes to Deepgram"
    )
    deepgram_connect_timeout_s: float = _setting(
        "DEEPGRAM_CONNECT_TIMEOUT", 10.0, "seconds to wait for Deepgram to accept a stream"
    )
    deepgram_close_timeout_s: float = _setting(
        "DEEPGRAM_CLOSE_TIMEOUT", 10.0, "seconds to wait for Deepgram's last results at call end"
    )
    deepgram_retry_attempts: int = _setting(
        "DEEPGRAM_RETRY_ATTEMPTS", 5, "reconnect attempts after Deepgram drops a call's stream"
    )
    deepgram_retry_window_s: float = _setting(
        "DEEPGRAM_RETRY_WINDOW", 30.0, "seconds of outage after which reconnecting stops"
    )
    audio_buffer_s: float = _setting(
        "AUDIO_BUFFER_SECONDS", 30.0, "seconds of audio kept for Deepgram during an outage"
    )
    drain_timeout_s: float = _setting(
        "DRAIN_TIMEOUT", 10.0, "seconds calls may go on after SIGTERM before they are ended"
    )
    client_queue_size: int = _setting(
        "CLIENT_QUEUE_SIZE", 256, "messages a client may fall behind before it is disconnected"
    )
    history_messages: int = _setting(
        "HISTORY_MESSAGES",
        1000,
        "final results kept per active call, replayed to a viewer that joins late (0: none)",
    )
    history_bytes: int = _setting(
        "HISTORY_BYTES",
        32 << 10,
        "and at most this many bytes of them per call: the oldest go first (0: none)",
    )
    log_level: str = _setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    twilio_auth_token: str = _secret(
        "TWILIO_AUTH_TOKEN", "", "check X-Twilio-Signature on /twilio with this auth token"
    )
    public_url: str = _setting(
        "PUBLIC_URL", "", "the proxy's address as Twilio reaches it (for the signature)"
    )
    twilio_stream_secret: str = _secret(
        "TWILIO_STREAM_SECRET", "", 'require <Parameter name="secret"> with this value'
    )
    client_tokens: tuple[str, ...] = _secret(
        "CLIENT_TOKENS", (), "comma-separated tokens, one required on /client"
    )
    tls_cert: str = _setting("TLS_CERT", "", "certificate chain (PEM) to serve wss:// directly")
    tls_key: str = _setting("TLS_KEY", "", "private key (PEM) of TLS_CERT")
    max_calls: int = _setting("MAX_CALLS", 1000, "concurrent calls; more are refused (503)")
    max_subscribers: int = _setting(
        "MAX_SUBSCRIBERS", 5000, "concurrent /client connections; more are refused (503)"
    )
    max_subscribers_per_call: int = _setting(
        "MAX_SUBSCRIBERS_PER_CALL", 100, "subscribers of one call; more are closed (1013)"
    )
    twilio_max_message_bytes: int = _setting(
        "TWILIO_MAX_MESSAGE_BYTES", 65536, "largest message accepted on /twilio (else 1009)"
    )
    client_max_message_bytes: int = _setting(
        "CLIENT_MAX_MESSAGE_BYTES", 4096, "largest message accepted on /client (else 1009)"
    )
    direct_receive: bool = _setting(
        "DIRECT_RECEIVE",
        True,
        "read /twilio and Deepgram's messages in the socket callback (false: websockets' recv())",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from `env`; unset or empty variables keep their defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"], "").strip()
            if raw:
                values[f.name] = _PARSERS[f.name](f.metadata["env"], raw)
        settings = cls(**values)
        settings._check_together()
        return settings

    def _check_together(self) -> None:
        """Settings that only make sense with others."""
        if self.twilio_auth_token and not self.public_url:
            raise ConfigError(
                "PUBLIC_URL", "required with TWILIO_AUTH_TOKEN: Twilio signs the URL it calls"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("TLS_KEY" if self.tls_cert else "TLS_CERT", "set both or neither")

    @property
    def twilio_stream_url(self) -> str:
        """The wss:// URL of /twilio as the TwiML gives it to Twilio (what Twilio signs)."""
        parts = urlsplit(self.public_url)
        return f"wss://{parts.netloc}{parts.path.rstrip('/')}/twilio"

    @property
    def needs_api_key(self) -> bool:
        """True when the URL is Deepgram's cloud, which refuses streams without a key."""
        host = urlsplit(self.deepgram_url).hostname or ""
        return host == "deepgram.com" or host.endswith(".deepgram.com")

    def listen_params(self) -> dict[str, str]:
        """The query options the user chose: the defaults with DEEPGRAM_PARAMS merged over."""
        return dict(DEFAULT_DEEPGRAM_PARAMS) | dict(self.deepgram_params)


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) for every setting, for `.env.example` and docs."""
    rows = []
    for f in fields(Settings):
        default = f.default
        if isinstance(default, tuple):
            default = ""
        rows.append((f.metadata["env"], str(default), f.metadata["doc"]))
    return rows


def _number_in(kind: type[N], low: N, high: N) -> Callable[[str, str], N]:
    """A parser of `kind` values (int or float) between `low` and `high` inclusive."""
    noun = "an integer" if kind is int else "a number"

    def parse(name: str, raw: str) -> N:
        try:
            value = kind(raw)
        except ValueError:
            raise ConfigError(name, f"expected {noun}, got {raw!r}") from None
        if not low <= value <= high:
            raise ConfigError(name, f"must be between {low} and {high}, got {value}")
        return value

    return parse


def _text(name: str, raw: str) -> str:
    return raw


def _ws_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(name, f"expected a ws:// or wss:// URL, got {raw!r}")
    if parts.query:
        raise ConfigError(name, "put query options in DEEPGRAM_PARAMS, not in the URL")
    return raw


def _query(name: str, raw: str) -> tuple[tuple[str, str], ...]:
    try:
        pairs = parse_qsl(raw.lstrip("?"), keep_blank_values=False, strict_parsing=True)
    except ValueError:
        raise ConfigError(name, f"expected key=value&key=value, got {raw!r}") from None
    fixed = sorted({key for key, _ in pairs} & AUDIO_FORMAT_PARAMS)
    if fixed:
        raise ConfigError(name, f"{', '.join(fixed)} are set by the proxy from the call's audio")
    return tuple(pairs)


def _public_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "wss") or not parts.hostname or parts.query:
        raise ConfigError(name, f"expected https://host or wss://host (no query), got {raw!r}")
    return raw


def _tokens(name: str, raw: str) -> tuple[str, ...]:
    tokens = tuple(token.strip() for token in raw.split(",") if token.strip())
    if any(len(token) < 16 for token in tokens):
        raise ConfigError(name, "each token must be at least 16 characters")
    return tokens


def _file(name: str, raw: str) -> str:
    if not Path(raw).is_file():
        raise ConfigError(name, f"no such file: {raw}")
    return raw


def _boolean(name: str, raw: str) -> bool:
    value = raw.lower()
    if value not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigError(name, f"expected true, false, 1, 0, yes or no, got {raw!r}")
    return value in ("true", "1", "yes")


def _log_level(name: str, raw: str) -> str:
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(name, f"expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "deepgram_api_key": _text,
    "deepgram_url": _ws_url,
    "deepgram_params": _query,
    "host": _text,
    "port": _number_in(int, 0, 65535),
    "chunk_ms": _number_in(int, 20, 1000),
    # Above ~5 s a one-track stretch could starve Deepgram into its 10 s idle close.
    "max_track_lag_ms": _number_in(int, 20, 5_000),
    "keepalive_s": _number_in(float, 0.1, 9.0),
    "deepgram_connect_timeout_s": _number_in(float, 0.1, 120.0),
    "deepgram_close_timeout_s": _number_in(float, 0.1, 120.0),
    "deepgram_retry_attempts": _number_in(int, 0, 100),
    "deepgram_retry_window_s": _number_in(float, 0.0, 3600.0),
    "audio_buffer_s": _number_in(float, 1.0, 3600.0),
    "drain_timeout_s": _number_in(float, 0.0, 86_400.0),
    "client_queue_size": _number_in(int, 1, 1_000_000),
    "history_messages": _number_in(int, 0, 1_000_000),
    "history_bytes": _number_in(int, 0, 1 << 30),
    "log_level": _log_level,
    "twilio_auth_token": _text,
    "public_url": _public_url,
    "twilio_stream_secret": _text,
    "client_tokens": _tokens,
    "tls_cert": _file,
    "tls_key": _file,
    "max_calls": _number_in(int, 1, 1_000_000),
    "max_subscribers": _number_in(int, 1, 1_000_000),
    "max_subscribers_per_call": _number_in(int, 1, 1_000_000),
    "twilio_max_message_bytes": _number_in(int, 1024, 16 << 20),
    "client_max_message_bytes": _number_in(int, 256, 16 << 20),
    "direct_receive": _boolean,
}
