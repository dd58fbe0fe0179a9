"""The SQLAlchemy engines (async, psycopg 3) and the Advanced-Alchemy configuration built from Settings.

Nothing here depends on session state, so the service runs behind PgBouncer in transaction
mode: no connect ``options``, no session ``SET``, no ``search_path``. The lock and statement
timeouts come from the runtime role's defaults when they equal the configured ones, else they
are sent with every transaction (see ``transactions.py``). Connections are in autocommit mode:
each request's statements form one implicit transaction.
"""

from __future__ import annotations

import functools
from typing import Any

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    SQLAlchemyAsyncConfig,
)
from psycopg import OperationalError
from psycopg import _queries as psycopg_queries  # private: see cache_statement_conversion
from psycopg.pq import ConnStatus
from sqlalchemy import URL, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection

from orders_service.config import Settings

ALEMBIC_VERSION_TABLE = "alembic_version"
APPLICATION_NAME = "orders-service"


def connect_args(settings: Settings, *, target_session_attrs: str | None = None) -> dict[str, Any]:
    """psycopg connection arguments: bounded waits on the network, prepared statements as configured, and which
    of the hosts to use (``DB_TARGET_SESSION_ATTRS``: by default one that accepts writes, so that after a
    failover no connection lands on a read-only standby)."""
    return {
        "application_name": APPLICATION_NAME,
        "target_session_attrs": target_session_attrs or settings.db_target_session_attrs,
        "connect_timeout": settings.db_connect_timeout,
        # A peer that stops answering is detected by the kernel instead of waiting forever.
        "keepalives": 1,
        "keepalives_idle": settings.db_keepalives_idle,
        "keepalives_interval": settings.db_keepalives_interval,
        "keepalives_count": settings.db_keepalives_count,
        "tcp_user_timeout": settings.db_tcp_user_timeout_ms,
        # None turns psycopg's server-side prepared statements off (PgBouncer < 1.21).
        "prepare_threshold": 5 if settings.db_prepared_statements else None,
    }


# Longer than any statement of ours, whatever the schema names (63 characters at most each).
CONVERSION_CACHE_LENGTH = 16_384


def cache_statement_conversion() -> None:
    """Let psycopg cache the conversion of our long statements too.

    On every execute psycopg turns a query's ``%(name)s`` placeholders into ``$n`` with a regular
    expression, and caches the result only for queries of at most ``MAX_CACHED_STATEMENT_LENGTH``
    (4,096) bytes. The order statement is about 4,500 (more with longer schema names): uncached, it
    cost about 0.35 ms of CPU per order (measured: 1.19 -> 1.59 ms per create, product / floor 1.03
    -> 0.54). The limit is a module attribute of ``psycopg._queries``, a private module:
    ``tests/db/test_statement_conversion.py`` checks that it still exists and is what psycopg reads.
    """
    psycopg_queries.MAX_CACHED_STATEMENT_LENGTH = max(
        psycopg_queries.MAX_CACHED_STATEMENT_LENGTH, CONVERSION_CACHE_LENGTH
    )


def create_engine(
    settings: Settings,
    *,
    pool_size: int,
    pool_timeout: float,
    url: URL | None = None,
    connect: dict[str, Any] | None = None,
) -> AsyncEngine:
    """An engine whose pool never hands out a connection the server has already closed; ``DB_HOST``'s servers
    unless ``url`` names others (with ``connect`` for their connection arguments)."""
    cache_statement_conversion()
    engine = create_async_engine(
        url or settings.database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=pool_timeout,
        pool_pre_ping=False,  # a round trip per checkout; the checkout probe below costs none
        # Nothing to reset on return: connections are in autocommit mode and every pipeline ends its
        # (implicit) transaction; a connection whose request broke off is invalidated instead.
        pool_reset_on_return=None,
        isolation_level="AUTOCOMMIT",
        hide_parameters=True,  # parameters hold user ids: never in an exception text or a log line
        connect_args=connect if connect is not None else connect_args(settings),
        execution_options={"schema_translate_map": settings.schema_translate_map},
    )
    event.listen(engine.sync_engine, "checkout", discard_if_closed_by_server)
    event.listen(engine.sync_engine, "connect", functools.partial(note_role_timeouts, settings))
    return engine


ROLE_SETS_TIMEOUTS = "role_sets_timeouts"  # connection info key: True when nothing needs sending
ROLE_TIMEOUTS_QUERY = (
    "SELECT setting::int FROM pg_settings WHERE name IN ('lock_timeout', 'statement_timeout') ORDER BY name"
)


def note_role_timeouts(settings: Settings, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    """Pool connect hook: does the role already give this connection the configured timeouts?

    ``ALTER ROLE … SET lock_timeout/statement_timeout`` (``orders-service print-grants`` prints
    them) makes every session of the role start with them, PgBouncer's server connections
    included. Then requests need not send them: one statement instead of a pipeline of two,
    about 15-20 % of the CPU of a request. When they differ, the configured ones are sent with
    every transaction: the configuration always wins.
    """
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute(ROLE_TIMEOUTS_QUERY)
        lock_ms, statement_ms = (int(row[0]) for row in cursor.fetchall())
    finally:
        cursor.close()
    record.info[ROLE_SETS_TIMEOUTS] = (lock_ms, statement_ms) == (
        settings.db_lock_timeout_ms,
        settings.db_statement_timeout_ms,
    )


def discard_if_closed_by_server(
    _dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: PoolProxiedConnection
) -> None:
    """Pool checkout hook: read what the server sent an idle connection, without a round trip.

    A server that restarted, crashed or terminated the backend has closed the socket (after a
    FATAL message); reading it now marks the connection bad, and raising DisconnectionError
    makes SQLAlchemy's pool drop it and hand out another one (or connect anew). So after a
    restart no request fails on a connection that died while it sat in the pool.

    It reads twice: libpq's first read takes the FATAL message and returns, and only the next
    one finds the close (seen with ``pg_terminate_backend``: one read left the connection "OK"
    and the next query failed with the FATAL message). A read that finds nothing costs one
    ``recv`` returning EAGAIN.
    """
    pgconn = record.driver_connection.pgconn  # type: ignore[union-attr]
    try:
        pgconn.consume_input()  # non-blocking: reads only what has already arrived
        pgconn.consume_input()
    except OperationalError:
        raise DisconnectionError("the server closed the connection while it was idle") from None
    if pgconn.status == ConnStatus.BAD:
        raise DisconnectionError("the connection is broken")


def request_engine(settings: Settings) -> AsyncEngine:
    """The pool that serves requests: ``DB_POOL_SIZE`` connections per worker, no overflow."""
    return create_engine(settings, pool_size=settings.db_pool_size, pool_timeout=settings.db_pool_timeout)


def replica_engine(settings: Settings) -> AsyncEngine:
    """The pool of the read replicas (``DB_READ_HOSTS``): ``DB_POOL_SIZE`` connections per worker, each to a
    standby picked at random (a replica promoted by a failover is left out as it takes writes)."""
    connect = {**connect_args(settings, target_session_attrs="standby"), "load_balance_hosts": "random"}
    return create_engine(
        settings,
        pool_size=settings.db_pool_size,
        pool_timeout=settings.db_pool_timeout,
        url=settings.read_database_url,
        connect=connect,
    )


def readiness_engine(settings: Settings) -> AsyncEngine:
    """One connection of its own for ``/health``, so readiness never queues behind requests."""
    return create_engine(settings, pool_size=1, pool_timeout=settings.health_timeout)


def sqlalchemy_config(settings: Settings, engine: AsyncEngine | None = None) -> SQLAlchemyAsyncConfig:
    """Advanced-Alchemy's configuration around ``engine`` (default: a new request engine); opens nothing."""
    return SQLAlchemyAsyncConfig(
        engine_instance=engine or request_engine(settings),
        session_config=AsyncSessionConfig(expire_on_commit=False, autoflush=False),
        create_all=False,
        alembic_config=AlembicAsyncConfig(
            script_location="migrations",
            toml_file="pyproject.toml",
            version_table_name=ALEMBIC_VERSION_TABLE,
            version_table_schema=settings.db_schema,
        ),
    )
