"""Settings: one frozen object, built once from a mapping of environment variables.

Each setting is declared once, as a field of `Settings` made by `setting(...)`: its
environment variable, default, parser (with its limits) and help text. `--help`,
`.env.example` and the README's table follow from those declarations (tests check them).
`Settings.from_env(mapping)` validates every value and raises `ConfigError` naming the
variable, so a typo stops start-up instead of failing the first call. Tests pass a dict.

The parsers (`number_in`, `ws_url`, `boolean`, …) take text and raise `ValueError` with a
message for people; commands reuse them for their own options (`commands/arguments.py`).
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
Parser = Callable[[str], T]

# The proxy decides these from the call's tracks; letting DEEPGRAM_PARAMS change them would
# make Deepgram misread the audio.
AUDIO_FORMAT_PARAMS = frozenset({"encoding", "sample_rate", "channels", "multichannel"})

DEFAULT_DEEPGRAM_PARAMS: tuple[tuple[str, str], ...] = (
    ("model", "nova-3"),
    ("interim_results", "true"),
    ("punctuate", "true"),
    ("smart_format", "true"),
)


# --- Parsers: text in, a value out, or ValueError saying what was expected -------------------


def number_in(kind: type[N], low: N, high: N) -> Parser[N]:
    """A parser of `kind` values (int or float) between `low` and `high` inclusive."""
    noun = "an integer" if kind is int else "a number"

    def parse(raw: str) -> N:
        try:
            value = kind(raw)
        except ValueError:
            raise ValueError(f"expected {noun}, got {raw!r}") from None
        if not low <= value <= high:
            raise ValueError(f"must be between {low} and {high}, got {value}")
        return value

    return parse


def text(raw: str) -> str:
    """Any text, as it is."""
    return raw


def boolean(raw: str) -> bool:
    """true/false, yes/no or 1/0, in any case."""
    value = raw.lower()
    if value in ("true", "yes", "1"):
        return True
    if value in ("false", "no", "0"):
        return False
    raise ValueError(f"expected true, false, yes, no, 1 or 0, got {raw!r}")


def ws_url(raw: str) -> str:
    """A ws:// or wss:// URL without a query."""
    parts = urlsplit(raw)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueError(f"expected a ws:// or wss:// URL, got {raw!r}")
    if parts.query:
        raise ValueError("put query options in DEEPGRAM_PARAMS, not in the URL")
    return raw


def listen_query(raw: str) -> tuple[tuple[str, str], ...]:
    """Deepgram query options in URL syntax, without the ones the proxy sets itself."""
    try:
        pairs = parse_qsl(raw.lstrip("?"), keep_blank_values=False, strict_parsing=True)
    except ValueError:
        raise ValueError(f"expected key=value&key=value, got {raw!r}") from None
    fixed = sorted({key for key, _ in pairs} & AUDIO_FORMAT_PARAMS)
    if fixed:
        raise ValueError(f"{', '.join(fixed)} are set by the proxy from the call's audio")
    return tuple(pairs)


def https_or_wss_url(raw: str) -> str:
    """The https:// or wss:// address Twilio reaches the proxy at."""
    parts = urlsplit(raw)
    if parts.scheme not in ("https", "wss") or not parts.hostname or parts.query:
        raise ValueError(f"expected https://host or wss://host (no query), got {raw!r}")
    return raw


def comma_separated(raw: str) -> tuple[str, ...]:
    """The non-empty items of a comma-separated list, stripped."""
    return tuple(item.strip() for item in raw.split(",") if item.strip())


def tokens(raw: str) -> tuple[str, ...]:
    """Comma-separated tokens of 16 characters or more."""
    found = comma_separated(raw)
    if any(len(token) < 16 for token in found):
        raise ValueError("each token must be at least 16 characters")
    return found


def existing_file(raw: str) -> str:
    """The path of a file that exists."""
    if not Path(raw).is_file():
        raise ValueError(f"no such file: {raw}")
    return raw


def level_name(raw: str) -> str:
    """A logging level name, upper-cased."""
    level = raw.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError(f"expected DEBUG, INFO, WARNING or ERROR, got {raw!r}")
    return level


def redis_url(raw: str) -> str:
    """A redis://, rediss:// or unix:// URL (credentials may be in it)."""
    parts = urlsplit(raw)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("expected a redis://, rediss:// or unix:// URL")  # never echo it
    if parts.scheme != "unix" and not parts.hostname:
        raise ValueError("expected redis://host[:port][/db]")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ValueError("its port is not a number from 0 to 65535") from None
    return raw


def postgres_url(raw: str) -> str:
    """A postgresql:// (or postgres://) URL."""
    parts = urlsplit(raw)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError("expected a postgresql:// URL")  # never echo it: it may hold a password
    return raw


def http_urls(raw: str) -> tuple[str, ...]:
    """Comma-separated http:// or https:// URLs."""
    found = comma_separated(raw)
    for url in found:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            # Never echo it: a URL may carry credentials or a token.
            raise ValueError(f"URL {found.index(url) + 1} is not an http:// or https:// URL")
    return found


WEBHOOK_EVENT_NAMES = ("call.started", "call.ended", "transcript.final")


def webhook_events(raw: str) -> tuple[str, ...]:
    """Comma-separated event names among WEBHOOK_EVENT_NAMES."""
    found = comma_separated(raw)
    unknown = sorted(set(found) - set(WEBHOOK_EVENT_NAMES))
    if unknown:
        raise ValueError(f"unknown event(s) {', '.join(unknown)}: use {WEBHOOK_EVENT_NAMES}")
    return found


def webhook_secret(raw: str) -> str:
    """A signing key of 16 characters or more."""
    if len(raw) < 16:
        raise ValueError("use at least 16 characters")
    return raw


def one_of(*choices: str) -> Parser[str]:
    """A parser of one of `choices`, in any case (returned in lower case)."""

    def parse(raw: str) -> str:
        value = raw.lower()
        if value not in choices:
            raise ValueError(f"expected {', '.join(choices)}, got {raw!r}")
        return value

    return parse


def bearer_token(raw: str) -> str:
    """A token of 16 characters or more, without spaces."""
    if len(raw) < 16 or any(c.isspace() for c in raw):
        raise ValueError("use at least 16 characters, without spaces")
    return raw


def key_prefix(raw: str) -> str:
    """Letters, digits, `-`, `_` and `.`, without braces (they would change Redis Cluster's
    hash slots)."""
    if not all(c.isalnum() or c in "-_." for c in raw):
        raise ValueError(f"use letters, digits, '-', '_' and '.', got {raw!r}")
    return raw


# --- Declarations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Declaration:
    """What a `Settings` field is read from: its variable, parser and help."""

    env: str
    parse: Parser[Any]
    doc: str
    secret: bool


def setting(env: str, default: T, doc: str, *, parse: Parser[T], secret: bool = False) -> T:
    """Declare a `Settings` field read from environment variable `env` with `parse`; `doc`
    is its help (`--help`, `.env.example`). A `secret` one is left out of repr (and logs)."""
    declaration = Declaration(env, parse, doc, secret)
    return field(default=default, repr=not secret, metadata={"setting": declaration})


def shown_default(value: object) -> str:
    """A default as written in `.env.example` and the README ("" for none)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


_SECONDS_LIMIT = 120.0  # waits on Deepgram beyond two minutes would outlast the call's patience


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server can be told; each field declares its environment variable."""

    deepgram_api_key: str = setting(
        "DEEPGRAM_API_KEY",
        "",
        "Deepgram API key (required for Deepgram's cloud)",
        parse=text,
        secret=True,
    )
    deepgram_url: str = setting(
        "DEEPGRAM_URL",
        "wss://api.deepgram.com/v1/listen",
        "Deepgram live endpoint (ws:// or wss://)",
        parse=ws_url,
    )
    deepgram_params: tuple[tuple[str, str], ...] = setting(
        "DEEPGRAM_PARAMS",
        (),
        "extra query options, merged over the defaults (URL query syntax)",
        parse=listen_query,
    )
    host: str = setting("HOST", "127.0.0.1", "address to listen on (0.0.0.0 for all)", parse=text)
    port: int = setting(
        "PORT", 5000, "TCP port to listen on (0 picks a free one)", parse=number_in(int, 0, 65535)
    )
    chunk_ms: int = setting(
        "CHUNK_MS",
        100,
        "milliseconds of audio per message to Deepgram",
        parse=number_in(int, 20, 1000),
    )
    # Above ~5 s a one-track stretch could starve Deepgram into its 10 s idle close.
    max_track_lag_ms: int = setting(
        "MAX_TRACK_LAG_MS",
        300,
        "how far one track may run ahead before the other is padded",
        parse=number_in(int, 20, 5_000),
    )
    keepalive_s: float = setting(
        "KEEPALIVE_INTERVAL",
        4.0,
        "seconds without audio before a KeepAlive goes to Deepgram",
        parse=number_in(float, 0.1, 9.0),
    )
    deepgram_connect_timeout_s: float = setting(
        "DEEPGRAM_CONNECT_TIMEOUT",
        10.0,
        "seconds to wait for Deepgram to accept a stream",
        parse=number_in(float, 0.1, _SECONDS_LIMIT),
    )
    deepgram_close_timeout_s: float = setting(
        "DEEPGRAM_CLOSE_TIMEOUT",
        10.0,
        "seconds to wait for Deepgram's last results at call end",
        parse=number_in(float, 0.1, _SECONDS_LIMIT),
    )
    deepgram_retry_attempts: int = setting(
        "DEEPGRAM_RETRY_ATTEMPTS",
        5,
        "reconnect attempts after Deepgram drops a call's stream",
        parse=number_in(int, 0, 100),
    )
    deepgram_retry_window_s: float = setting(
        "DEEPGRAM_RETRY_WINDOW",
        30.0,
        "seconds of outage after which reconnecting stops",
        parse=number_in(float, 0.0, 3600.0),
    )
    audio_buffer_s: float = setting(
        "AUDIO_BUFFER_SECONDS",
        30.0,
        "seconds of audio kept for Deepgram during an outage",
        parse=number_in(float, 1.0, 3600.0),
    )
    drain_timeout_s: float = setting(
        "DRAIN_TIMEOUT",
        10.0,
        "seconds calls may go on after SIGTERM before they are ended",
        parse=number_in(float, 0.0, 86_400.0),
    )
    client_queue_size: int = setting(
        "CLIENT_QUEUE_SIZE",
        256,
        "messages a client may fall behind before it is disconnected",
        parse=number_in(int, 1, 1_000_000),
    )
    history_messages: int = setting(
        "HISTORY_MESSAGES",
        1000,
        "final results kept per active call, replayed to a viewer that joins late (0: none)",
        parse=number_in(int, 0, 1_000_000),
    )
    history_bytes: int = setting(
        "HISTORY_BYTES",
        32 << 10,
        "and at most this many bytes of them per call: the oldest go first (0: none)",
        parse=number_in(int, 0, 1 << 30),
    )
    # Watching by phone number (/client, the viewer's `follow`, `watch +15550100`).
    number_parameters: tuple[str, ...] = setting(
        "NUMBER_PARAMETERS",
        ("From", "To"),
        "custom parameters holding a call's phone numbers, for watchers that name a number",
        parse=comma_separated,
    )
    number_wait_s: float = setting(
        "NUMBER_WAIT_S",
        3600.0,
        "seconds a /client client that chose a number waits for a call with it",
        parse=number_in(float, 0.1, 604_800.0),
    )
    log_level: str = setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR", parse=level_name)
    direct_receive: bool = setting(
        "DIRECT_RECEIVE",
        True,
        "read /twilio, /client and Deepgram's messages in the socket callback (false: recv())",
        parse=boolean,
    )
    twilio_auth_token: str = setting(
        "TWILIO_AUTH_TOKEN",
        "",
        "check X-Twilio-Signature on /twilio with this auth token",
        parse=text,
        secret=True,
    )
    public_url: str = setting(
        "PUBLIC_URL",
        "",
        "the proxy's address as Twilio reaches it (for the signature)",
        parse=https_or_wss_url,
    )
    twilio_stream_secret: str = setting(
        "TWILIO_STREAM_SECRET",
        "",
        'require <Parameter name="secret"> with this value',
        parse=text,
        secret=True,
    )
    client_tokens: tuple[str, ...] = setting(
        "CLIENT_TOKENS",
        (),
        "comma-separated tokens, one required on /client",
        parse=tokens,
        secret=True,
    )
    tls_cert: str = setting(
        "TLS_CERT", "", "certificate chain (PEM) to serve wss:// directly", parse=existing_file
    )
    tls_key: str = setting("TLS_KEY", "", "private key (PEM) of TLS_CERT", parse=existing_file)
    max_calls: int = setting(
        "MAX_CALLS",
        1000,
        "concurrent calls; more are refused (503)",
        parse=number_in(int, 1, 1_000_000),
    )
    max_subscribers: int = setting(
        "MAX_SUBSCRIBERS",
        5000,
        "concurrent /client connections; more are refused (503)",
        parse=number_in(int, 1, 1_000_000),
    )
    max_subscribers_per_call: int = setting(
        "MAX_SUBSCRIBERS_PER_CALL",
        100,
        "subscribers of one call; more are closed (1013)",
        parse=number_in(int, 1, 1_000_000),
    )
    twilio_max_message_bytes: int = setting(
        "TWILIO_MAX_MESSAGE_BYTES",
        65536,
        "largest message accepted on /twilio (else 1009)",
        parse=number_in(int, 1024, 16 << 20),
    )
    client_max_message_bytes: int = setting(
        "CLIENT_MAX_MESSAGE_BYTES",
        4096,
        "largest message accepted on /client (else 1009)",
        parse=number_in(int, 256, 16 << 20),
    )
    # Its default is engine.DEFAULT_MAX_STREAMS (checked by a test): config may not
    # import the engine, which needs the offline extra.
    offline_max_streams: int = setting(
        "OFFLINE_MAX_STREAMS",
        4,
        "concurrent streams of the in-process offline engine; more are refused (429, retried)",
        parse=number_in(int, 1, 1000),
    )
    # Twilio and websockets clients ping every few seconds at most; browsers not at all.
    control_frames_per_s: float = setting(
        "CONTROL_FRAMES_PER_SECOND",
        10.0,
        "ping and pong frames a connection may send per second on average (else 1008)",
        parse=number_in(float, 0.1, 1_000_000.0),
    )
    control_frames_burst: int = setting(
        "CONTROL_FRAMES_BURST",
        50,
        "ping and pong frames a connection may send at once",
        parse=number_in(int, 1, 1_000_000),
    )
    # Replies we send wait for drain at 32 KiB, so only a peer that stops reading while it
    # makes us answer (pings) or falls far behind gets here.
    write_buffer_max_bytes: int = setting(
        "WRITE_BUFFER_MAX_BYTES",
        1 << 20,
        "bytes waiting to be sent to one connection before it is dropped",
        parse=number_in(int, 64 << 10, 1 << 30),
    )
    # Twilio sends `start` right after the 101: a stream is pending for one round trip, so
    # even a burst of calls keeps few pending at once.
    max_pending_streams: int = setting(
        "MAX_PENDING_STREAMS",
        200,
        "/twilio connections that have not sent start yet; more are refused (503)",
        parse=number_in(int, 1, 1_000_000),
    )

    # Scale-out (docs/scaling-out.md): without REDIS_URL, one process and the in-memory hub.
    redis_url: str = setting(
        "REDIS_URL",
        "",
        "redis://, rediss:// (TLS) or unix:// URL of the Redis or Valkey that instances share"
        " (empty: one process, no Redis)",
        parse=redis_url,
        secret=True,  # it may hold a password
    )
    redis_key_prefix: str = setting(
        "REDIS_KEY_PREFIX",
        "tdp",
        "prefix of every Redis key, so deployments can share one Redis",
        parse=key_prefix,
    )
    redis_heartbeat_timeout_s: float = setting(
        "REDIS_HEARTBEAT_TIMEOUT_S",
        5.0,
        "an instance silent this long is gone: its calls end for watchers elsewhere",
        parse=number_in(float, 1.0, 300.0),
    )
    redis_publish_buffer: int = setting(
        "REDIS_PUBLISH_BUFFER",
        10_000,
        "messages kept for Redis while it is unreachable; beyond, they are dropped and counted",
        parse=number_in(int, 100, 10_000_000),
    )
    redis_stream_max_messages: int = setting(
        "REDIS_STREAM_MAX_MESSAGES",
        2000,
        "Deepgram messages of a call kept in Redis (about), the history a late watcher gets",
        parse=number_in(int, 100, 1_000_000),
    )
    redis_stream_keep_s: int = setting(
        "REDIS_STREAM_KEEP_S",
        60,
        "how long a call's messages stay in Redis after it ends",
        parse=number_in(int, 1, 86_400),
    )
    workers: int = setting(
        "WORKERS",
        1,
        "processes serving one port (SO_REUSEPORT); more than 1 needs REDIS_URL",
        parse=number_in(int, 1, 256),
    )

    # After the call (docs/transcripts.md): stored transcripts, the /calls API, webhooks.
    store_transcripts: bool = setting(
        "STORE_TRANSCRIPTS",
        True,
        "store each call's transcript as it goes (false: keep nothing after a call)",
        parse=boolean,
    )
    transcripts_file: str = setting(
        "TRANSCRIPTS_FILE",
        "transcripts.sqlite3",
        "the SQLite file transcripts are stored in (without DATABASE_URL)",
        parse=text,
    )
    database_url: str = setting(
        "DATABASE_URL",
        "",
        "postgresql:// URL to store transcripts in PostgreSQL instead (for several instances)",
        parse=postgres_url,
        secret=True,  # it may hold a password
    )
    retention_days: float = setting(
        "RETENTION_DAYS",
        30.0,
        "days a stored call is kept; older ones are purged",
        parse=number_in(float, 0.01, 36_500.0),
    )
    transcript_max_bytes: int = setting(
        "TRANSCRIPT_MAX_BYTES",
        8 << 20,
        "final results kept per call for its stored transcript; beyond, it is truncated",
        parse=number_in(int, 64 << 10, 1 << 30),
    )
    store_queue_bytes: int = setting(
        "STORE_QUEUE_BYTES",
        64 << 20,
        "bytes of calls' events (mostly finals) kept waiting while the store is down; beyond,"
        " the oldest finals are dropped and counted",
        parse=number_in(int, 1 << 10, 1 << 40),
    )
    webhook_urls: tuple[str, ...] = setting(
        "WEBHOOK_URL",
        (),
        "comma-separated http(s):// URLs that receive signed call events",
        parse=http_urls,
        secret=True,  # a URL may hold a password or a token
    )
    webhook_secret: str = setting(
        "WEBHOOK_SECRET",
        "",
        "the key webhooks are signed with (HMAC-SHA256), 16+ characters",
        parse=webhook_secret,
        secret=True,
    )
    webhook_events: tuple[str, ...] = setting(
        "WEBHOOK_EVENTS",
        ("call.started", "call.ended"),
        "events to send: call.started, call.ended, transcript.final",
        parse=webhook_events,
    )
    webhook_timeout_s: float = setting(
        "WEBHOOK_TIMEOUT_S",
        5.0,
        "seconds a webhook endpoint has to answer",
        parse=number_in(float, 0.1, 120.0),
    )
    webhook_queue_size: int = setting(
        "WEBHOOK_QUEUE_SIZE",
        1000,
        "events waiting per endpoint; beyond, new ones are dropped and counted",
        parse=number_in(int, 1, 1_000_000),
    )
    webhook_retry_attempts: int = setting(
        "WEBHOOK_RETRY_ATTEMPTS",
        8,
        "deliveries tried per event (network errors, 5xx, 429) before it is dropped",
        parse=number_in(int, 1, 100),
    )

    # Observability (docs/observability.md): metrics, readiness, structured logs.
    metrics: bool = setting(
        "METRICS",
        True,
        "keep Prometheus metrics and serve them on GET /metrics (false: neither)",
        parse=boolean,
    )
    metrics_port: int | None = setting(
        "METRICS_PORT",
        None,
        "serve /metrics on this port instead of PORT (0 picks a free one)",
        parse=number_in(int, 0, 65535),
    )
    metrics_token: str = setting(
        "METRICS_TOKEN",
        "",
        "require Authorization: Bearer <token> on /metrics, 16+ characters",
        parse=bearer_token,
        secret=True,
    )
    log_format: str = setting(
        "LOG_FORMAT",
        "text",
        "text, or json: one JSON object per line",
        parse=one_of("text", "json"),
    )
    deepgram_start_check: str = setting(
        "DEEPGRAM_START_CHECK",
        "required",
        "check the Deepgram key at start: required (a refused key stops start-up), warn, off",
        parse=one_of("required", "warn", "off"),
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> Settings:
        """Build settings from `env`; unset or empty variables keep their defaults."""
        values: dict[str, Any] = {}
        for f in fields(cls):
            declared: Declaration = f.metadata["setting"]
            raw = env.get(declared.env, "").strip()
            if raw:
                try:
                    values[f.name] = declared.parse(raw)
                except ValueError as exc:
                    raise ConfigError(declared.env, str(exc)) from None
        settings = cls(**values)
        settings._check_together()
        return settings

    def _check_together(self) -> None:
        """Settings that only make sense with others."""
        if self.twilio_auth_token and not self.public_url:
            raise ConfigError(
                "PUBLIC_URL", "required with TWILIO_AUTH_TOKEN: Twilio signs the URL it calls"
            )
        if self.workers > 1 and not self.redis_url:
            raise ConfigError(
                "WORKERS",
                "more than 1 needs REDIS_URL: workers share calls and watchers through Redis"
                " (set REDIS_URL=redis://127.0.0.1:6379/0, or WORKERS=1)",
            )
        if self.webhook_urls and not self.webhook_secret:
            raise ConfigError("WEBHOOK_SECRET", "required with WEBHOOK_URL: every event is signed")
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
    """(variable, default as written in docs, help) for every setting, in declaration order."""
    rows = []
    for f in fields(Settings):
        declared: Declaration = f.metadata["setting"]
        rows.append((declared.env, shown_default(f.default), declared.doc))
    return rows


#: Settings an earlier release read and this one does not: what to set instead.
RETIRED_SETTINGS = {
    "STORE_QUEUE_CALLS": "the store's queue is bounded in bytes now: set STORE_QUEUE_BYTES",
}


def retired_settings(env: Mapping[str, str]) -> list[str]:
    """A warning for each retired setting `env` still sets (it would be silently ignored)."""
    return [
        f"{name} is no longer read: {instead}"
        for name, instead in RETIRED_SETTINGS.items()
        if env.get(name, "").strip()
    ]
