"""Every migration can be interrupted at any step and run again to the same end state; its lock waits are bounded.

A deploy job's deadline or a Ctrl-C can stop ``alembic upgrade head`` anywhere. The first test
stops it before each statement in turn (1st, 2nd, ... until a run completes), on a database
migrated from nothing, then runs ``alembic upgrade head`` again: it must end where an
uninterrupted run ends (tables, columns, defaults, constraints, indexes valid, the version).
The second stops the concurrent index build of 0004 the way a long transaction does: past
``DB_LOCK_TIMEOUT_MS``, with an INVALID index left behind, which the next run rebuilds.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.pool import NullPool

from orders_service.config import Settings
from orders_service.dev import migrate
from orders_service.dev.demo_catalog import create_products_table
from tests.support.database import scratch_database

HEAD = ScriptDirectory.from_config(migrate.alembic_config(Settings())).get_current_head()


class Interrupted(BaseException):
    """Stands for Ctrl-C or a deploy job killed: not an Exception, nothing catches it on the way out."""


@pytest.fixture(scope="module")
def blank(server: Settings) -> Iterator[Settings]:
    """A database with the catalog's table and an empty ``orders`` schema (the admin migrates it)."""
    with scratch_database(server) as settings:
        engine = create_engine(settings.database_url)
        with engine.begin() as connection:
            create_products_table(connection, settings)
        engine.dispose()
        yield settings


def reset(settings: Settings) -> None:
    with psycopg.connect(settings.conninfo, autocommit=True) as connection:
        connection.execute(f"DROP SCHEMA IF EXISTS {settings.db_schema} CASCADE")
        connection.execute(f"CREATE SCHEMA {settings.db_schema}")


def upgrade_interrupted_before(settings: Settings, statement: int) -> bool:
    """``alembic upgrade head`` stopped just before its ``statement``-th SQL statement; False if it ran whole."""
    engine = create_engine(settings.database_url, poolclass=NullPool)
    sent = 0

    def before(*_: Any) -> None:
        nonlocal sent
        sent += 1
        if sent == statement:
            raise Interrupted

    event.listen(engine, "before_cursor_execute", before)
    config = migrate.alembic_config(settings)
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    except BaseException:
        # Interrupted, or what SQLAlchemy's clean-up raised on top of it (a connection it invalidated)
        if sent < statement:
            raise
        return True
    finally:
        engine.dispose()
    return False


def end_state(connection: Connection, schema: str) -> dict[str, Any]:
    """What a migration run leaves: columns with their types and defaults, constraints, indexes (and whether
    they are valid), the version."""
    columns = connection.execute(
        text(
            "SELECT table_name, column_name, data_type, column_default, is_nullable FROM information_schema.columns"
            " WHERE table_schema = :schema ORDER BY 1, 2"
        ),
        {"schema": schema},
    ).all()
    constraints = connection.execute(
        text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE connamespace = to_regnamespace(:schema) ORDER BY 1, 2"
        ),
        {"schema": schema},
    ).all()
    indexes = connection.execute(
        text(
            "SELECT c.relname, pg_get_indexdef(i.indexrelid), i.indisvalid FROM pg_index AS i"
            " JOIN pg_class AS c ON c.oid = i.indexrelid WHERE c.relnamespace = to_regnamespace(:schema) ORDER BY 1"
        ),
        {"schema": schema},
    ).all()
    version = connection.execute(text(f"SELECT version_num FROM {schema}.alembic_version")).scalar_one()
    return {"columns": columns, "constraints": constraints, "indexes": indexes, "version": version}


def state(settings: Settings) -> dict[str, Any]:
    engine = create_engine(settings.database_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            return end_state(connection, settings.db_schema)
    finally:
        engine.dispose()


def test_every_migration_interrupted_at_any_step_runs_again_to_the_same_end(blank: Settings) -> None:
    reset(blank)
    migrate.upgrade(blank)
    expected = state(blank)
    assert expected["version"] == HEAD
    assert all(valid for _, _, valid in expected["indexes"])
    interrupted_at = 0
    for statement in range(1, 500):
        reset(blank)
        if not upgrade_interrupted_before(blank, statement):
            break
        interrupted_at = statement
        migrate.upgrade(blank)  # what the operator does next: run it again
        assert state(blank) == expected, f"interrupted before statement {statement}"
    assert interrupted_at >= 20, interrupted_at  # every migration's steps were interrupted, 0004's block included


def test_a_concurrent_index_build_stopped_by_a_long_transaction_is_rebuilt_by_the_next_run(blank: Settings) -> None:
    """A transaction that began before 0004 makes its concurrent index build wait: DB_LOCK_TIMEOUT_MS bounds the
    wait (it waited with no bound), the run stops in one line, the index it left INVALID is rebuilt next time."""
    reset(blank)
    migrate.upgrade(blank, "0003")
    impatient = {**os.environ, **blank.as_env(), "DB_LOCK_TIMEOUT_MS": "1000"}
    with psycopg.connect(blank.conninfo) as long_transaction:
        long_transaction.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        long_transaction.execute(f"SELECT count(*) FROM {blank.db_schema}.orders")  # a snapshot, held
        started = time.monotonic()
        stopped = subprocess.run(
            [sys.executable, "-m", "alembic", "upgrade", "head"],
            env=impatient,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        took = time.monotonic() - started
        long_transaction.rollback()
    assert stopped.returncode == 1, stopped.stderr
    assert "gave up waiting for a lock" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert took < 20  # bounded by the lock timeout, not by the transaction
    left = state(blank)
    assert left["version"] == "0003"
    assert ("ix_outbox_due", False) in {(name, valid) for name, _, valid in left["indexes"]}
    rerun = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        env=impatient,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert rerun.returncode == 0, rerun.stderr
    final = state(blank)
    assert final["version"] == HEAD
    assert all(valid for _, _, valid in final["indexes"])
    assert "ix_outbox_pending" not in {name for name, _, _ in final["indexes"]}
