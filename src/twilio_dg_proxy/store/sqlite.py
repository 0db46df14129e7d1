"""The embedded transcript store: one SQLite file (the standard library's sqlite3).

Every statement runs on one dedicated thread with one connection, never on the event loop:
a slow disk, a lock held by another process or a large transcript delays only the store.
WAL mode lets readers (the /calls API, another process) read while a call is written.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from ..exceptions import StoreError, StoreUnavailable
from ..logs import get_logger
from ..transcripts import FinishedCall
from .base import (
    INTERRUPTED_CODE,
    INTERRUPTED_REASON,
    LONGEST_CALL_MS,
    SCHEMA_VERSION,
    CallPage,
    CallQuery,
    CallStarted,
    FinalResult,
    StoreEvent,
    call_from_row,
    events_of,
    final_rows,
    finals_query,
    get_query,
    list_query,
    page_of,
    parameter_rows,
    runs,
    statement_args,
    write_statements,
)
from .instance import is_gone

logger = get_logger("store")

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
    # Version 2: a call's row is written when it starts (ended_at_ms, end_code and
    # end_reason NULL while it is live) and its finals are rows of their own, appended as
    # they come. SQLite cannot drop a NOT NULL: `calls` is rebuilt (with foreign keys off,
    # `_migrate`), and each call's JSON array of finals becomes its rows, verbatim.
    (
        """CREATE TABLE calls_v2 (
            call_sid TEXT PRIMARY KEY,
            started_at_ms INTEGER NOT NULL,
            ended_at_ms INTEGER,
            end_code INTEGER,
            end_reason TEXT,
            tracks TEXT NOT NULL,
            parameters TEXT NOT NULL,
            request_ids TEXT NOT NULL,
            truncated INTEGER NOT NULL,
            instance TEXT NOT NULL DEFAULT ''
        )""",
        """INSERT INTO calls_v2 SELECT call_sid, started_at_ms, ended_at_ms, end_code,
            end_reason, tracks, parameters, request_ids, truncated, '' FROM calls""",
        """CREATE TABLE finals (
            call_sid TEXT NOT NULL REFERENCES calls ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            text TEXT NOT NULL,
            PRIMARY KEY (call_sid, seq)
        )""",
        """INSERT INTO finals SELECT calls.call_sid, CAST(each.key AS INTEGER), each.value
            FROM calls, json_each(calls.finals) AS each""",
        "DROP TABLE calls",
        "ALTER TABLE calls_v2 RENAME TO calls",
        "CREATE INDEX calls_newest ON calls (ended_at_ms DESC, call_sid DESC)",
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
                await store._call(_end_interrupted, connection)
                yield store
            finally:
                await _run(runner, connection.close)
        finally:
            if own:
                runner.shutdown(wait=False)  # its last job (the close) is done: it is idle

    async def write(self, events: Sequence[StoreEvent]) -> None:
        await self._call(_write, self._connection, events)

    async def save(self, call: FinishedCall) -> None:
        await self.write(events_of(call))

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
    # Off while tables are rebuilt (dropping `calls` would delete its children's rows);
    # checked before the commit. The pragma does nothing inside a transaction.
    connection.execute("PRAGMA foreign_keys = OFF")
    try:
        _migrate_steps(connection)
    finally:
        connection.execute("PRAGMA foreign_keys = ON")


def _migrate_steps(connection: sqlite3.Connection) -> None:
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
        if connection.execute("PRAGMA foreign_key_check").fetchone() is not None:
            raise sqlite3.IntegrityError("the migration broke a foreign key")


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


_STATEMENTS = write_statements("?", "ON CONFLICT DO NOTHING")
(_INSERT_FINAL,) = _STATEMENTS[FinalResult]
_INSERT_PARAMETER = "INSERT INTO call_parameters VALUES (?, ?, ?)"


def _write(connection: sqlite3.Connection, events: Sequence[StoreEvent]) -> None:
    with _transaction(connection):
        for run in runs(events):
            if isinstance(run[0], FinalResult):
                # In key order, each call's last page of the finals' (call_sid, seq) index
                # is read once per batch, not once per final: a batch interleaves every live
                # call's finals, more calls than the small page cache holds (-25% CPU).
                connection.executemany(_INSERT_FINAL, sorted(final_rows(run)))
                continue
            for index, statement in enumerate(_STATEMENTS[type(run[0])]):
                connection.executemany(statement, (statement_args(e, index) for e in run))
            if isinstance(run[0], CallStarted):
                connection.executemany(_INSERT_PARAMETER, parameter_rows(run))


def _end_interrupted(connection: sqlite3.Connection) -> None:
    """Mark ended the calls left live by a process of this host that has stopped (killed,
    crashed): a file belongs to one instance. They end when their last final did (the
    latest the store knows them alive), with `INTERRUPTED_REASON`. Best effort: a file
    locked now is tried again at the next start."""
    rows = connection.execute(
        "SELECT call_sid, instance FROM calls WHERE ended_at_ms IS NULL"
    ).fetchall()
    gone = [(row["call_sid"],) for row in rows if is_gone(row["instance"])]
    if not gone:
        return
    try:
        with _transaction(connection):
            connection.executemany(_END_INTERRUPTED, gone)
    except sqlite3.OperationalError as exc:
        logger.warning("could not mark %d interrupted call(s) ended: %s", len(gone), exc)
        return
    logger.warning(
        "%d call(s) left live by a proxy that stopped marked ended (%s)",
        len(gone),
        INTERRUPTED_REASON,
    )


# The call's end: its start plus the end of its last final (Deepgram's seconds on the
# call's timeline), or its start if it had none.
_END_INTERRUPTED = f"""UPDATE calls SET
    ended_at_ms = started_at_ms + max(0, coalesce((
        SELECT CAST(max(json_extract(text, '$.start') + json_extract(text, '$.duration'))
            * 1000 AS INTEGER)
        FROM finals WHERE finals.call_sid = calls.call_sid AND json_valid(text)), 0)),
    end_code = {INTERRUPTED_CODE}, end_reason = '{INTERRUPTED_REASON}'
    WHERE call_sid = ? AND ended_at_ms IS NULL"""


def _list(connection: sqlite3.Connection, query: CallQuery) -> list[FinishedCall]:
    sql, args = list_query(query, "?")
    return [call_from_row(_dict(row)) for row in connection.execute(sql, args)]


def _get(connection: sqlite3.Connection, call_sid: str, finals: bool) -> FinishedCall | None:
    connection.execute("BEGIN")  # one snapshot for the row and its finals
    try:
        row = connection.execute(get_query("?"), (call_sid,)).fetchone()
        if row is None:
            return None
        texts = (
            [text for (text,) in connection.execute(finals_query("?"), (call_sid,))]
            if finals
            else []
        )
    finally:
        connection.execute("COMMIT")
    return call_from_row(_dict(row), texts)


def _dict(row: sqlite3.Row) -> dict[str, Any]:
    return {key: row[key] for key in row.keys()}


def _purge(connection: sqlite3.Connection, ended_before_ms: int) -> int:
    with _transaction(connection):
        ended = connection.execute("DELETE FROM calls WHERE ended_at_ms < ?", (ended_before_ms,))
        left_live = connection.execute(
            "DELETE FROM calls WHERE ended_at_ms IS NULL AND started_at_ms < ?",
            (ended_before_ms - LONGEST_CALL_MS,),
        )
    return ended.rowcount + left_live.rowcount
