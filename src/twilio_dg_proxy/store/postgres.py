"""The shared transcript store: PostgreSQL (DATABASE_URL), through psycopg 3's asyncio
connections and a psycopg_pool pool, so that several instances keep one call log.

The schema is `base`'s in PostgreSQL's types: the call info's JSON columns as jsonb (an
operator can query them), the finals as text (Deepgram's texts verbatim: jsonb would
reorder their keys). Instances that start together migrate one at a time (an advisory
lock held by the migration's transaction). Calls left live by an instance that stopped stay
live: instances share the database, and none can tell whether another has stopped.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from ..exceptions import StoreError, StoreUnavailable
from ..transcripts import FinishedCall
from .base import (
    LONGEST_CALL_MS,
    SCHEMA_VERSION,
    CallPage,
    CallQuery,
    CallStarted,
    FinalResult,
    StoreEvent,
    call_from_row,
    events_of,
    finals_query,
    get_query,
    list_query,
    page_of,
    parameter_rows,
    runs,
    statement_args,
    write_statements,
)

T = TypeVar("T")

#: Seconds to wait for a connection (from the pool, or a new one) before a call's save is
#: retried later or an API request answers 503.
CONNECT_TIMEOUT_S = 5.0
# The longest one use of the store may take (a connection, then its statements): beyond, the
# store counts as unavailable and the writer tries again later.
STATEMENT_TIMEOUT_S = 30.0
#: Connections to PostgreSQL per instance: one writer, the API's readers, the purge.
POOL_SIZE = 4
#: pg_advisory_xact_lock's key for migrations (any constant; "tdp" in ASCII).
_MIGRATION_LOCK = 0x746470

# Each step brings the schema from version n to n + 1 (index n).
MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE calls (
            call_sid text PRIMARY KEY,
            started_at_ms bigint NOT NULL,
            ended_at_ms bigint NOT NULL,
            end_code integer NOT NULL,
            end_reason text NOT NULL,
            tracks jsonb NOT NULL,
            parameters jsonb NOT NULL,
            request_ids jsonb NOT NULL,
            truncated boolean NOT NULL,
            finals text NOT NULL
        )""",
        "CREATE INDEX calls_newest ON calls (ended_at_ms DESC, call_sid DESC)",
        """CREATE TABLE call_parameters (
            call_sid text NOT NULL REFERENCES calls ON DELETE CASCADE,
            name text NOT NULL,
            value text NOT NULL,
            PRIMARY KEY (call_sid, name)
        )""",
        "CREATE INDEX call_parameters_by_value ON call_parameters (name, value)",
    ),
    # Version 2: a call's row is written when it starts (ended_at_ms, end_code and
    # end_reason NULL while it is live) and its finals are rows of their own, appended as
    # they come; each call's JSON array of finals becomes its rows, verbatim (json, not
    # jsonb: the elements are strings, returned as they were).
    (
        """ALTER TABLE calls ALTER COLUMN ended_at_ms DROP NOT NULL,
            ALTER COLUMN end_code DROP NOT NULL, ALTER COLUMN end_reason DROP NOT NULL,
            ADD COLUMN instance text NOT NULL DEFAULT ''""",
        """CREATE TABLE finals (
            call_sid text NOT NULL REFERENCES calls ON DELETE CASCADE,
            seq integer NOT NULL,
            text text NOT NULL,
            PRIMARY KEY (call_sid, seq)
        )""",
        """INSERT INTO finals SELECT calls.call_sid, each.n - 1, each.text
            FROM calls, json_array_elements_text(calls.finals::json) WITH ORDINALITY
            AS each(text, n)""",
        "ALTER TABLE calls DROP COLUMN finals",
    ),
)
assert len(MIGRATIONS) == SCHEMA_VERSION


class PostgresStore:
    """A `TranscriptStore` in PostgreSQL; open it with `PostgresStore.opened(url)`."""

    kind = "postgresql"

    def __init__(self, pool: AsyncConnectionPool[Any], timeout_s: float, url: str = "") -> None:
        self._pool = pool
        self._timeout_s = timeout_s
        self._url = url  # only to keep its password out of error messages

    @classmethod
    @asynccontextmanager
    async def opened(
        cls, url: str, *, timeout_s: float = CONNECT_TIMEOUT_S, pool_size: int = POOL_SIZE
    ) -> AsyncIterator[PostgresStore]:
        """Connect to `url` and create or migrate the schema; the pool is closed when the
        block exits. Raises StoreUnavailable if PostgreSQL cannot be reached (in
        `timeout_s`), StoreError if a newer release wrote the schema."""
        pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=timeout_s,
            kwargs={"connect_timeout": max(1, round(timeout_s)), "row_factory": dict_row},
            check=AsyncConnectionPool.check_connection,  # a connection PostgreSQL dropped
            name="transcripts",
        )
        await _probe(url, timeout_s)
        try:
            try:
                await pool.open(wait=True, timeout=timeout_s)
            except PoolTimeout as exc:
                message = _first_line(exc, url)
                raise StoreUnavailable(f"PostgreSQL cannot be reached: {message}") from None
            store = cls(pool, timeout_s, url)
            await store._call(_migrate)
            yield store
        finally:
            await pool.close()

    async def write(self, events: Sequence[StoreEvent]) -> None:
        await self._call(_write, events)

    async def save(self, call: FinishedCall) -> None:
        await self.write(events_of(call))

    async def list_calls(self, query: CallQuery) -> CallPage:
        rows = await self._call(_list, query)
        return page_of(rows, query.limit)

    async def get_call(self, call_sid: str, *, finals: bool = True) -> FinishedCall | None:
        return await self._call(_get, call_sid, finals)

    async def purge(self, ended_before_ms: int) -> int:
        return await self._call(_purge, ended_before_ms)

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """`fn(connection, *args)` in one transaction, psycopg's errors as the store's:
        connection, resource (disk full), shutdown and lock errors are worth retrying."""
        try:
            # A held lock or a half-open connection must not stall the writer for ever.
            async with asyncio.timeout(STATEMENT_TIMEOUT_S):
                async with self._pool.connection() as connection, connection.transaction():
                    return await fn(connection, *args)
        except TimeoutError:
            raise StoreUnavailable(
                f"PostgreSQL: no answer in {STATEMENT_TIMEOUT_S:.0f} s"
            ) from None
        except (PoolTimeout, psycopg.OperationalError, psycopg.InterfaceError) as exc:
            raise StoreUnavailable(f"PostgreSQL: {_first_line(exc, self._url)}") from None
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL: {_first_line(exc, self._url)}") from None


async def _probe(url: str, timeout_s: float) -> None:
    """Connect once, so that a store that cannot be reached at start says why (the pool
    would only time out)."""
    try:
        connection = await psycopg.AsyncConnection.connect(
            url, connect_timeout=max(1, round(timeout_s))
        )
    except psycopg.Error as exc:
        message = _first_line(exc, url)
        raise StoreUnavailable(f"PostgreSQL cannot be reached: {message}") from None
    await connection.close()


def _first_line(exc: Exception, url: str) -> str:
    """The first line of `exc`'s message, without DATABASE_URL's credentials: psycopg's
    errors may quote the connection string (e.g. a bad percent-escape in the password)."""
    line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    for secret in {userinfo, userinfo.partition(":")[2], unquote(userinfo.partition(":")[2])}:
        if len(secret) > 1:  # not a lone separator
            line = line.replace(secret, "***")
    return line


async def _migrate(connection: psycopg.AsyncConnection[Any]) -> None:
    await connection.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
    await connection.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    cursor = await connection.execute("SELECT max(version) AS version FROM schema_version")
    row = await cursor.fetchone()
    version = (row or {}).get("version") or 0
    if version > SCHEMA_VERSION:
        raise psycopg.DataError(
            f"schema version {version} is newer than this release's ({SCHEMA_VERSION})"
        )
    for step in MIGRATIONS[version:]:
        for statement in step:
            await connection.execute(statement)
    if version < SCHEMA_VERSION:
        await connection.execute("DELETE FROM schema_version")
        await connection.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))


_STATEMENTS = write_statements("%s", "ON CONFLICT DO NOTHING")
_INSERT_PARAMETER = "INSERT INTO call_parameters VALUES (%s, %s, %s)"


# A run of finals as one JSON parameter: psycopg adapts and sends each row of an executemany
# in Python, on the event loop: 11 us of the loop a final, against 3 us for json.dumps of the
# batch (measured writing 60,000 finals in batches); Deepgram's texts come back verbatim.
_INSERT_FINALS = """INSERT INTO finals (call_sid, seq, text)
    SELECT f->>0, (f->>1)::integer, f->>2 FROM json_array_elements(%s::json) AS f
    WHERE EXISTS (SELECT 1 FROM calls WHERE calls.call_sid = f->>0)
    ON CONFLICT DO NOTHING"""


async def _write(connection: psycopg.AsyncConnection[Any], events: Sequence[StoreEvent]) -> None:
    async with connection.cursor() as cursor:
        for run in runs(events):
            if isinstance(run[0], FinalResult):
                rows = [[e.call_sid, e.seq, e.text] for e in run if isinstance(e, FinalResult)]
                await cursor.execute(_INSERT_FINALS, (json.dumps(rows),))
                continue
            for index, statement in enumerate(_STATEMENTS[type(run[0])]):
                await cursor.executemany(statement, [statement_args(e, index, Jsonb) for e in run])
            if isinstance(run[0], CallStarted):
                await cursor.executemany(_INSERT_PARAMETER, parameter_rows(run))


async def _list(connection: psycopg.AsyncConnection[Any], query: CallQuery) -> list[FinishedCall]:
    sql, args = list_query(query, "%s")
    cursor = await connection.execute(sql, args)
    return [call_from_row(row) for row in await cursor.fetchall()]


async def _get(
    connection: psycopg.AsyncConnection[Any], call_sid: str, finals: bool
) -> FinishedCall | None:
    cursor = await connection.execute(get_query("%s"), (call_sid,))
    row = await cursor.fetchone()
    if row is None:
        return None
    texts: list[str] = []
    if finals:
        cursor = await connection.execute(finals_query("%s"), (call_sid,))
        texts = [found["text"] for found in await cursor.fetchall()]
    return call_from_row(row, texts)


async def _purge(connection: psycopg.AsyncConnection[Any], ended_before_ms: int) -> int:
    ended = await connection.execute("DELETE FROM calls WHERE ended_at_ms < %s", (ended_before_ms,))
    left_live = await connection.execute(
        "DELETE FROM calls WHERE ended_at_ms IS NULL AND started_at_ms < %s",
        (ended_before_ms - LONGEST_CALL_MS,),
    )
    return ended.rowcount + left_live.rowcount
