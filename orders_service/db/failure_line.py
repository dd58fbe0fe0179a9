"""One line for a database failure: which host, port, database and role were tried, and the server's reason.

What a command prints when it cannot use the database (``orders-service purge-events``, ``alembic
upgrade head``, …), and what ``serve`` and the relay log, instead of a driver traceback:

    cannot connect to database "appdb" on host 127.0.0.1, port 5432, as role "app": role "app" does not exist
"""

from __future__ import annotations

import re

import psycopg
from sqlalchemy.exc import DBAPIError

from orders_service.config import Settings
from orders_service.db.unavailable import DatabaseUnavailable

# What a command may meet when the database is unreachable, refuses the role or fails a statement.
DATABASE_ERRORS: tuple[type[Exception], ...] = (psycopg.Error, DBAPIError, DatabaseUnavailable)

# psycopg's messages for a connection that was never made (generators.py, connection.py).
_CONNECT_FAILURE = re.compile(
    r"^(connection failed|connection is bad|connection timeout expired|failed to resolve host)"
)
# libpq's prefixes, which repeat what the line says already: where it tried, and the severity.
_PSYCOPG_PREFIX = re.compile(r"^(connection failed|connection is bad): ")
_LIBPQ_ATTEMPT = re.compile(r'connection to server (at "[^"]*"( \([^)]*\))?, port \d+|on socket "[^"]*") failed: ')
_SEVERITY = re.compile(r"^(FATAL|ERROR):\s+")


def failure_line(settings: Settings, exc: BaseException) -> str:
    """``exc`` as one line that names ``DB_HOST``, ``DB_PORT``, ``DB_NAME`` and ``DB_USER`` as configured."""
    message = _driver_message(exc)
    endpoints = settings.db_endpoints
    if len(endpoints) == 1:
        servers = f"host {endpoints[0].host}, port {endpoints[0].port}"
    else:
        servers = "hosts " + ", ".join(f"{endpoint.host}:{endpoint.port}" for endpoint in endpoints)
    where = f'database "{settings.db_name}" on {servers}, as role "{settings.db_user}"'
    if len(endpoints) > 1 or settings.db_target_session_attrs != "read-write":
        where += f" ({settings.db_target_session_attrs})"
    if _CONNECT_FAILURE.match(message):
        return f"cannot connect to {where}: {_reason(message)}"
    return f"{where}: {_reason(message)}"


def _driver_message(exc: BaseException) -> str:
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, DatabaseUnavailable):
        return exc.context or exc.DETAILS[exc.cause]
    if isinstance(exc, psycopg.Error) and exc.diag.message_primary:
        return exc.diag.message_primary  # no DETAIL: it may hold a row's values
    return str(exc).strip() or type(exc).__name__


def _reason(message: str) -> str:
    """libpq's reason without the prefixes, its hint (``Is the server running …?``) in parentheses."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    first = _SEVERITY.sub("", _LIBPQ_ATTEMPT.sub("", _PSYCOPG_PREFIX.sub("", lines[0])))
    return f"{first} ({' '.join(lines[1:])})" if len(lines) > 1 else first
