"""Where transcripts are kept after their call: the store (SQLite or PostgreSQL), and the
writer that saves each finished call in it without ever holding up a call."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from ..config import Settings
from ..exceptions import ConfigError
from .base import TranscriptStore


def open_store(settings: Settings) -> AbstractAsyncContextManager[TranscriptStore]:
    """The store the settings name, opened (schema created or migrated) for the block:
    PostgreSQL with DATABASE_URL, else the SQLite file TRANSCRIPTS_FILE. Raises ConfigError
    if DATABASE_URL is set without psycopg installed; entering raises StoreUnavailable if
    the store cannot be opened."""
    if settings.database_url:
        try:
            from .postgres import PostgresStore
        except ImportError:
            raise ConfigError(
                "DATABASE_URL", "needs psycopg: pip install 'twilio-dg-proxy[postgres]'"
            ) from None
        return PostgresStore.opened(settings.database_url)
    from .sqlite import SqliteStore

    return SqliteStore.opened(settings.transcripts_file)
