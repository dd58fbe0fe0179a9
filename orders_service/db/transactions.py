"""Run a request's statements as one transaction, in one round trip, and turn database faults into 503s.

``TransactionRunner.run`` checks a connection out of SQLAlchemy's pool and sends the request's
statements in one round trip. Connections are in autocommit mode and nothing sends BEGIN:

- one statement, when the runtime role's defaults already are the configured lock and statement
  timeouts (``orders-service print-grants``): a statement is a transaction of its own;
- otherwise one psycopg pipeline: ``set_config('lock_timeout', …, true)`` and
  ``statement_timeout`` (local to this transaction) when the role does not set them, the
  statements, then a Sync. Everything before the Sync is one implicit transaction: the server
  commits it at the Sync when every statement succeeded and rolls it back when one failed.

No session state is used, so this works behind PgBouncer in transaction mode, and the
configured timeouts hold for every transaction.

Driver errors go through SQLAlchemy's own machinery: the dialect decides whether the error means
the connection is gone, SQLAlchemy wraps it, and a dead connection is invalidated so the pool
replaces it. Transient faults become ``DatabaseUnavailable`` (503); a deadlock or serialization
failure, caused by a writer outside this service, is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import PoolProxiedConnection

from orders_service.causes import UnavailableCause
from orders_service.config import Settings
from orders_service.db.engine import ROLE_SETS_TIMEOUTS
from orders_service.db.statements import Step
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics

logger = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
SET_TIMEOUTS = (
    "SELECT set_config('lock_timeout', %(lock_timeout)s, true),"
    " set_config('statement_timeout', %(statement_timeout)s, true)"
)
_RETRYABLE = {"40P01": "deadlock", "40001": "serialization_failure"}
# A unique key that a concurrent transaction committed while this one waited: run again, it then sees the row
# (an order's Idempotency-Key, written with its order after the wait for a product: ``place_sql``).
_RETRYABLE_CONFLICTS = {"pk_idempotency_keys": "idempotency_key_race"}
UNIQUE_VIOLATION = "23505"
_TIMED_OUT: dict[str, UnavailableCause] = {"55P03": "lock_timeout", "57014": "statement_timeout"}
# A table or column missing (migrations or the catalog out of step), or a privilege not granted.
_SCHEMA_OUT_OF_STEP: dict[str, UnavailableCause] = {
    "42P01": "table_missing",
    "42703": "table_missing",
    "42501": "database_unavailable",
}
# Errors the server sends when it is going away or refusing work: the connection is done for.
_SERVER_GONE_CLASSES = ("08", "57P01", "57P02", "57P03", "53")
# A write on a server that accepts none (a standby, one promoted late, or a name that moved to it before its
# promotion): the connection is on the wrong server, and another one may find the primary.
READ_ONLY_TRANSACTION = "25006"
# libpq's refusal of every server of DB_HOST for DB_TARGET_SESSION_ATTRS (read-write, primary): the servers are up,
# none takes writes (a failover under way), which is what ``read_only`` says, not that the database is down.
_WRONG_SESSION = re.compile(r"session is read-only|server is in hot standby mode")

Rows = list[tuple[Any, ...]]


class StatementFailed(Exception):
    """A statement failed for a reason that is not a fault (e.g. a constraint); nothing was committed.

    ``error`` is SQLAlchemy's wrapping of the driver error; ``sqlstate`` the server's code.
    """

    def __init__(self, error: DBAPIError) -> None:
        super().__init__(_describe(error.orig))  # the primary message: no DETAIL with the row's values
        self.error = error
        self.sqlstate: str | None = getattr(error.orig, "sqlstate", None)


class TransactionRunner:
    """The request path's only way to the database."""

    def __init__(
        self,
        engine: AsyncEngine,
        settings: Settings,
        *,
        pool_size: int,
        pool_timeout: float,
        budget: float | None = None,
        pool_name: str | None = None,
    ) -> None:
        """``pool_name``: report the pool's use under that ``pool`` label (the request pool only)."""
        self.engine = engine
        self._engine = engine
        self._dialect = engine.dialect
        self._admission = asyncio.Semaphore(pool_size)
        self.pool_timeout = pool_timeout
        self._schema_map = settings.schema_translate_map
        self._timeouts = {
            "lock_timeout": str(settings.db_lock_timeout_ms),
            "statement_timeout": str(settings.db_statement_timeout_ms),
        }
        # A request's whole wait for the database (pool, connect, answer, retries) ends by then.
        self.budget = settings.db_deadline_seconds if budget is None else budget
        self._in_use: Any = _NO_GAUGE
        self._waiting: Any = _NO_GAUGE
        if pool_name is not None:
            metrics.POOL_MAX.labels(pool=pool_name).set(pool_size)
            self._in_use = metrics.POOL_IN_USE.labels(pool=pool_name)
            self._waiting = metrics.POOL_WAITING.labels(pool=pool_name)

    @property
    def saturated(self) -> bool:
        """Every connection of the pool is in use or promised: a request starting now would wait for one."""
        return self._admission.locked()

    def deadline(self) -> float:
        """The event-loop time by which a request starting now must have its answer."""
        return asyncio.get_running_loop().time() + self.budget

    async def run(
        self,
        steps: Sequence[Step],
        *,
        writes: bool,
        deadline: float | None = None,
        lock_timeout_ms: int | None = None,
    ) -> list[Rows]:
        """Run ``steps`` as one transaction and return each statement's rows.

        ``writes`` says whether the steps change data: when the connection is lost after they
        were sent, the outcome is then unknown (the commit may have happened), and the 503 says so.
        A deadlock, a serialization failure or a unique key a concurrent transaction just committed
        rolled everything back, so the steps are run again (``MAX_ATTEMPTS`` in all). Nothing waits
        past ``deadline`` (default: ``budget`` from now). ``lock_timeout_ms``: a shorter wait for a
        row lock than ``DB_LOCK_TIMEOUT_MS`` for this transaction (sent with it).
        """
        if deadline is None:
            deadline = self.deadline()
        timeouts = self._timeouts
        if lock_timeout_ms is not None and lock_timeout_ms < int(self._timeouts["lock_timeout"]):
            timeouts = {**self._timeouts, "lock_timeout": str(max(1, lock_timeout_ms))}
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await self._run_once(steps, writes=writes, deadline=deadline, timeouts=timeouts)
            except _Retryable as conflict:
                if attempt == MAX_ATTEMPTS:
                    raise DatabaseUnavailable("deadlock", context=conflict.cause) from None
                metrics.TRANSACTION_RETRIES.labels(cause=conflict.cause).inc()
                logger.info("retrying a transaction after a %s (attempt %d)", conflict.cause, attempt + 1)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run_once(
        self, steps: Sequence[Step], *, writes: bool, deadline: float, timeouts: Mapping[str, str]
    ) -> list[Rows]:
        await self._admit(deadline)
        self._in_use.inc()
        try:
            try:
                async with asyncio.timeout_at(deadline):
                    # Admitted: a pooled connection is free, or there is room to open one (DB_CONNECT_TIMEOUT).
                    connection = await self._engine.raw_connection()
            except TimeoutError:
                raise DatabaseUnavailable("database_timeout") from None
            except (DBAPIError, psycopg.Error) as exc:  # the pool hands over the driver's connect error as is
                cause = exc.orig if isinstance(exc, DBAPIError) else exc
                refused: UnavailableCause = "read_only" if _WRONG_SESSION.search(str(cause)) else "database_unavailable"
                raise DatabaseUnavailable(refused, context=_describe(cause)) from None
            try:
                return await self._send(connection, steps, writes=writes, deadline=deadline, timeouts=timeouts)
            finally:
                connection.close()  # back to the pool: nothing to reset, each pipeline ended its transaction
        finally:
            self._in_use.dec()
            self._admission.release()

    async def _admit(self, deadline: float) -> None:
        """Wait for one of the pool's connections, at most ``DB_POOL_TIMEOUT`` and never past ``deadline``.

        Requests wait here, on an asyncio semaphore sized like the pool, rather than in SQLAlchemy's
        pool queue: checking out is then never a wait, and waiting costs next to nothing (measured:
        190 -> 110 us of CPU per query at 32 requests for 10 connections).
        """
        if not self._admission.locked():
            await self._admission.acquire()  # free: returns at once
            return
        loop = asyncio.get_running_loop()
        self._waiting.inc()
        try:
            async with asyncio.timeout_at(min(deadline, loop.time() + self.pool_timeout)):
                await self._admission.acquire()
        except TimeoutError:
            raise DatabaseUnavailable("pool_exhausted") from None
        finally:
            self._waiting.dec()

    async def _send(
        self,
        connection: PoolProxiedConnection,
        steps: Sequence[Step],
        *,
        writes: bool,
        deadline: float,
        timeouts: Mapping[str, str],
    ) -> list[Rows]:
        driver: psycopg.AsyncConnection[Any] = connection.driver_connection  # type: ignore[assignment]
        # Results in binary: psycopg loads integers and timestamps without parsing text (measured: 13 % fewer
        # instructions for a page of 30 orders, read and answered; callgrind, benchmarks in performance.md).
        cursors = [driver.cursor(binary=True) for _ in steps]
        send_timeouts = timeouts is not self._timeouts or not connection.info.get(ROLE_SETS_TIMEOUTS, False)
        watchdog = _Watchdog(driver, deadline)
        try:
            if len(steps) > 1 or send_timeouts:
                # One round trip, one implicit transaction: everything before the pipeline's Sync.
                async with driver.pipeline():
                    if send_timeouts:
                        await driver.cursor().execute(SET_TIMEOUTS, timeouts)
                    for cursor, step in zip(cursors, steps, strict=True):
                        await cursor.execute(*self._query(step))
            else:
                # One statement in autocommit mode is a transaction of its own.
                await cursors[0].execute(*self._query(steps[0]))
            return [await cursor.fetchall() if cursor.description else [] for cursor in cursors]
        except psycopg.Error as exc:
            raise await self._translate(exc, connection, steps, writes=writes, timed_out=watchdog.fired) from None
        except BaseException:
            # Cancelled mid-pipeline (shutdown): the connection's state is unknown, never reuse it.
            await _invalidate(connection, None)
            raise
        finally:
            watchdog.cancel()

    def _query(self, step: Step) -> tuple[str, Mapping[str, Any]]:
        sql, literals = step.statement.compiled(self._dialect, self._schema_map)
        return sql, {**literals, **step.params} if literals else step.params

    async def _translate(
        self,
        exc: psycopg.Error,
        connection: PoolProxiedConnection,
        steps: Sequence[Step],
        *,
        writes: bool,
        timed_out: bool,
    ) -> Exception:
        """SQLAlchemy's view of ``exc`` (disconnect or not, wrapped), the dead connection invalidated."""
        dbapi_connection = connection.dbapi_connection
        sqlstate = exc.sqlstate or ""
        disconnected = (
            self._dialect.is_disconnect(exc, dbapi_connection, None)  # type: ignore[arg-type]
            or sqlstate.startswith(_SERVER_GONE_CLASSES)
            # libpq's own failures ("cannot exit pipeline mode while busy" when the server ended the
            # session mid-pipeline): the connection's state is unknown, so it is treated as lost.
            or (isinstance(exc, psycopg.OperationalError) and not sqlstate)
        )
        wrapped: DBAPIError = DBAPIError.instance(  # type: ignore[assignment]  # a DBAPI error is always wrapped
            ", ".join(step.statement.name for step in steps),
            None,
            exc,
            psycopg.Error,
            hide_parameters=True,
            connection_invalidated=disconnected,
            dialect=self._dialect,
        )
        if sqlstate == READ_ONLY_TRANSACTION:
            await _invalidate(connection, wrapped)
            return DatabaseUnavailable("read_only", connection_lost=True, context=_describe(exc))
        if disconnected:
            await _invalidate(connection, wrapped)
            cause: UnavailableCause = "database_timeout" if timed_out else "database_unavailable"
            # A write whose answer never came may have been committed at the Sync.
            return DatabaseUnavailable(
                cause, outcome_unknown=writes, connection_lost=not timed_out, context=_describe(exc)
            )
        retry_cause = _RETRYABLE.get(sqlstate)
        if sqlstate == UNIQUE_VIOLATION:
            retry_cause = _RETRYABLE_CONFLICTS.get(exc.diag.constraint_name or "")
        if retry_cause is not None:
            return _Retryable(retry_cause)
        if sqlstate in _TIMED_OUT:
            return DatabaseUnavailable(_TIMED_OUT[sqlstate])
        if sqlstate in _SCHEMA_OUT_OF_STEP:  # a deployment fault, never the client's: 503 with what is wrong
            return DatabaseUnavailable(_SCHEMA_OUT_OF_STEP[sqlstate], context=_describe(exc))
        return StatementFailed(wrapped)


async def _invalidate(connection: PoolProxiedConnection, error: BaseException | None) -> None:
    """Close the psycopg connection now and have SQLAlchemy's pool replace it at its next checkout."""
    driver: psycopg.AsyncConnection[Any] = connection.driver_connection  # type: ignore[assignment]
    with contextlib.suppress(psycopg.Error):
        await driver.close()
    # Soft: SQLAlchemy closes and replaces it on the next checkout, which runs where it may await.
    connection.invalidate(error, soft=True)


class _NoGauge:
    """Stands in for the gauges of a pool that is not reported (readiness)."""

    def inc(self) -> None:
        pass

    def dec(self) -> None:
        pass


_NO_GAUGE = _NoGauge()


class _Retryable(Exception):
    def __init__(self, cause: str) -> None:
        self.cause = cause


class _Watchdog:
    """Shuts the connection's socket down if the database has not answered by the deadline.

    A frozen network or a hung server sends no error, and TCP keepalives are answered by any
    proxy in between: only a deadline on our side ends the wait. Shutting the socket down (not
    closing it: psycopg still owns the descriptor) makes psycopg's pending read fail at once,
    so the request answers 503 and the connection is invalidated like any lost one.
    """

    __slots__ = ("_driver", "_handle", "fired")

    def __init__(self, driver: psycopg.AsyncConnection[Any], deadline: float) -> None:
        self._driver = driver
        self.fired = False
        self._handle = asyncio.get_running_loop().call_at(deadline, self._abort)

    def _abort(self) -> None:
        self.fired = True  # the 503 it causes logs the cause: database_timeout
        try:
            with socket.socket(fileno=os.dup(self._driver.pgconn.socket)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except (OSError, psycopg.Error):  # pragma: no cover - already closed
            pass

    def cancel(self) -> None:
        self._handle.cancel()


def _describe(exc: BaseException | None) -> str:
    """The driver's own message, first line only: no SQL, no parameters."""
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
