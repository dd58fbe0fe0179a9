"""Run SQLAlchemy Core statements on the session's own psycopg connection.

The hot paths' statements are SQLAlchemy Core, built once at import. Compiling them once per
schema mapping and handing the SQL to psycopg skips SQLAlchemy's per-execution work (ORM
execute path, result wrapping, greenlet hops), which cost more CPU than the database round
trips themselves: measured with benchmarks/bench.py, see README "Performance". The session
still owns the connection and the transaction (BEGIN on first use, explicit COMMIT/ROLLBACK),
and driver errors are raised as SQLAlchemy's DBAPIError subclasses, as if SQLAlchemy ran them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_scoped_session
from sqlalchemy.sql import ClauseElement

_compiled: dict[tuple[int, tuple[tuple[str | None, str], ...]], tuple[str, dict[str, Any]]] = {}


def _compile(statement: ClauseElement, connection: AsyncConnection) -> tuple[str, dict[str, Any]]:
    """SQL text (schema names filled in) and the values of its anonymous parameters, cached per mapping."""
    translate: dict[str | None, str] = (
        connection.engine.sync_engine.get_execution_options().get("schema_translate_map") or {}
    )
    key = (id(statement), tuple(sorted(translate.items(), key=lambda item: str(item[0]))))
    if (cached := _compiled.get(key)) is None:
        compiled = statement.compile(
            dialect=connection.dialect, schema_translate_map=translate, render_schema_translate=True
        )
        literals = {name: value for name, value in compiled.params.items() if value is not None}
        cached = _compiled[key] = (str(compiled), literals)
    return cached


async def fetch_all(
    session: AsyncSession | async_scoped_session[AsyncSession], statement: ClauseElement, params: Mapping[str, Any]
) -> list[Any]:
    """Execute ``statement`` in the session's transaction; rows as named tuples (empty when none are returned)."""
    connection = await session.connection()
    sql, literals = _compile(statement, connection)
    driver: psycopg.AsyncConnection[Any] = (await connection.get_raw_connection()).driver_connection  # type: ignore[assignment]
    arguments = {**literals, **params}
    try:
        async with driver.cursor(row_factory=namedtuple_row) as cursor:
            await cursor.execute(sql, arguments)
            return await cursor.fetchall() if cursor.description else []
    except psycopg.Error as exc:
        raise DBAPIError.instance(sql, arguments, exc, psycopg.Error) from exc
