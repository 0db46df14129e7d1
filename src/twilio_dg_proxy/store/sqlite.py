"""The embedded transcript store: one SQLite file (the standard library's sqlite3).

Every statement runs on one dedicated thread with one connection, never on the event loop:
a slow disk, a lock held by another process or a large transcript delays only the store.
WAL mode lets readers (the /calls API, another process) read while a call is written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from ..exceptions import StoreError, StoreUnavailable
from ..transcripts import FinishedCall
from .base import (
    CALL_COLUMNS,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    CallPage,
    CallQuery,
    call_from_row,
    call_row,
    list_query,
    page_of,
)

T = TypeVar("T")

#: How long a write waits for another connection's lock before it fails (and the writer
#: retries later): short, so that a locked file shows in /healthz while calls wait.
BUSY_TIMEOUT_MS = 1000

#: The connection's page cache, in KiB.
CACHE_KIB = 256

# Each step brings the schema from version n to n + 1 (index n).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            call_sid TEXT PRIMARY KEY,
            started_at_ms INTEGER NOT NULL,
            ended_at_ms INTEGER NOT NULL,
            end_code INTEGER NOT NULL,
            end_reason TEXT NOT NULL,
            tracks TEXT NOT NULL,
            parameters TEXT NOT NULL,
            request_ids TEXT NOT NULL,
            truncated INTEGER NOT NULL,
            finals TEXT NOT NULL
        )""",
        "CREATE INDEX calls_newest ON calls (ended_at_ms DESC, call_sid DESC)",
        """CREATE TABLE call_parameters (
            call_sid TEXT NOT NULL REFERENCES calls ON DELETE CASCADE,
            name TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (call_sid, name)
        )""",
        "CREATE INDEX call_parameters_by_value ON call_parameters (name, value)",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class SqliteStore:
    """A `TranscriptStore` in one SQLite file; open it with `SqliteStore.opened(path)`."""

    kind = "sqlite"

    def __init__(self, connection: sqlite3.Connection, executor: Executor) -> None:
        self._connection = connection
        self._executor = executor

    @classmethod
    @asynccontextmanager
    async def opened(
        cls, path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, executor: Executor | None = None
    ) -> AsyncIterator[SqliteStore]:
        """Open (creating or migrating) the store at `path`, closed when the block exits.
        Raises StoreUnavailable if it cannot be opened, StoreError if a newer release wrote
        it. `executor` runs the statements (by default a thread of the store's own; the
        tests pass one that blocks the loop, as a control)."""
        own = executor is None
        runner = executor or ThreadPoolExecutor(1, thread_name_prefix="sqlite-store")
        try:
            connection = await _run(runner, _connect, path, busy_timeout_ms)
            store = cls(connection, runner)
            try:
                await store._call(_migrate, connection)
                yield store
            finally:
                await _run(runner, connection.close)
        finally:
            if own:
                runner.shutdown(wait=False)  # its last job (the close) is done: it is idle

    async def save(self, call: FinishedCall) -> None:
        await self._call(_save, self._connection, call)

    async def list_calls(self, query: CallQuery) -> CallPage:
        rows = await self._call(_list, self._connection, query)
        return page_of(rows, query.limit)

    async def get_call(self, call_sid: str, *, finals: bool = True) -> FinishedCall | None:
        return await self._call(_get, self._connection, call_sid, finals)

    async def purge(self, ended_before_ms: int) -> int:
        return await self._call(_purge, self._connection, ended_before_ms)

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        return await _run(self._executor, fn, *args)


async def _run(executor: Executor, fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on `executor`, sqlite3's errors as the store's: OperationalError (locked,
    busy, full, I/O, cannot open) is worth retrying, any other is not."""
    try:
        return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
    except sqlite3.OperationalError as exc:
        raise StoreUnavailable(f"SQLite: {exc}") from exc
    except sqlite3.Error as exc:
        raise StoreError(f"SQLite: {exc}") from exc


# On the store's thread.


def _connect(path: str, busy_timeout_ms: int) -> sqlite3.Connection:
    # Autocommit: every write says BEGIN IMMEDIATE (take the write lock first, so a busy
    # file fails at once rather than deadlocking on an upgrade from a read lock).
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        connection.row_factory = sqlite3.Row
        connection.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        connection.execute("PRAGMA journal_mode = WAL")
        # In WAL mode NORMAL loses no data on a crash of the process, only the last commits
        # on a power loss; it spares an fsync per call.
        connection.execute("PRAGMA synchronous = NORMAL")
        connection.execute("PRAGMA foreign_keys = ON")
        # A small page cache (SQLite's default is 2 MiB per connection): each call is written
        # once and rarely read, and the operating system caches the file anyway; this keeps
        # the proxy's memory flat as the file grows.
        connection.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except BaseException:
        connection.close()
        raise
    return connection


def _migrate(connection: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION. A current schema is only read, so that a file
    another connection is writing to still opens."""
    if _version(connection) == SCHEMA_VERSION:
        return
    with _transaction(connection):
        connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        version = _version(connection)
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this release's ({SCHEMA_VERSION})"
            )
        for step in MIGRATIONS[version:]:
            for statement in step:
                connection.execute(statement)
        if version < SCHEMA_VERSION:
            connection.execute("DELETE FROM schema_version")
            connection.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))


def _version(connection: sqlite3.Connection) -> int:
    """The schema's version: 0 for a new file."""
    try:
        row = connection.execute("SELECT max(version) FROM schema_version").fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return 0
        raise
    return int(row[0] or 0)


class _transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on any exception."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    def __enter__(self) -> None:
        self.connection.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.connection.execute("COMMIT" if kind is None else "ROLLBACK")


_INSERT_CALL = (
    f"INSERT INTO calls ({', '.join(CALL_COLUMNS)}) VALUES ({', '.join('?' for _ in CALL_COLUMNS)})"
)


def _save(connection: sqlite3.Connection, call: FinishedCall) -> None:
    sid = call.info.call_sid
    with _transaction(connection):
        connection.execute("DELETE FROM calls WHERE call_sid = ?", (sid,))  # and its parameters
        connection.execute(_INSERT_CALL, call_row(call))
        connection.executemany(
            "INSERT INTO call_parameters VALUES (?, ?, ?)",
            ((sid, name, value) for name, value in call.info.custom_parameters.items()),
        )


def _list(connection: sqlite3.Connection, query: CallQuery) -> list[FinishedCall]:
    sql, args = list_query(query, "?")
    return _calls(connection.execute(sql, args))


def _get(connection: sqlite3.Connection, call_sid: str, finals: bool) -> FinishedCall | None:
    columns = CALL_COLUMNS if finals else SUMMARY_COLUMNS
    cursor = connection.execute(
        f"SELECT {', '.join(columns)} FROM calls WHERE call_sid = ?", (call_sid,)
    )
    found = _calls(cursor)
    return found[0] if found else None


def _calls(rows: Iterable[sqlite3.Row]) -> list[FinishedCall]:
    return [call_from_row({key: row[key] for key in row.keys()}) for row in rows]


def _purge(connection: sqlite3.Connection, ended_before_ms: int) -> int:
    with _transaction(connection):
        cursor = connection.execute("DELETE FROM calls WHERE ended_at_ms < ?", (ended_before_ms,))
    return cursor.rowcount
