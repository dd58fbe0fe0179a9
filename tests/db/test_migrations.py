"""Alembic migrations: agree with the models, honour DB_SCHEMA/CATALOG_SCHEMA, downgrade, least privilege."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from litestar.testing import AsyncTestClient
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.exc import OperationalError

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.db.grants import grants_sql
from orders_service.dev import migrate
from orders_service.dev.demo_catalog import create_products_table
from orders_service.dev.migrate import PROJECT_ROOT
from tests.support.database import ProvisionedDatabase, scratch_database

OUR_TABLES = {"alembic_version", "orders", "order_items", "idempotency_keys", "outbox", "outbox_relay_lease"}


@pytest.fixture
def custom_schemas(server: Settings) -> Iterator[Settings]:
    """A fresh database whose settings use non-default schema names, catalog created, nothing migrated."""
    with scratch_database(server) as settings:
        custom = Settings.from_env({**settings.as_env(), "DB_SCHEMA": "shop_orders", "CATALOG_SCHEMA": "shop_catalog"})
        engine = create_engine(custom.database_url)
        with engine.begin() as connection:
            create_products_table(connection, custom)
            connection.execute(text("INSERT INTO shop_catalog.products VALUES (1, 250, 10), (2, 100, 3)"))
        engine.dispose()
        yield custom


def test_models_and_migrations_agree(database: ProvisionedDatabase) -> None:
    command.check(migrate.alembic_config(database.owner))  # raises when autogenerate finds a difference


async def test_everything_runs_with_non_default_schema_names(custom_schemas: Settings) -> None:
    migrate.upgrade(custom_schemas)
    command.check(migrate.alembic_config(custom_schemas))
    engine = create_engine(custom_schemas.database_url)
    tables = {
        (schema, table) for schema in ("orders", "shop_orders") for table in inspect(engine).get_table_names(schema)
    }
    assert tables == {("shop_orders", table) for table in OUR_TABLES}

    async with AsyncTestClient(app=create_app(custom_schemas)) as client:
        placed = await client.post(
            "/orders",
            json={"items": [{"product_id": 1, "qty": 2}, {"product_id": 2, "qty": 3}]},
            headers={"X-User": "a"},
        )
        short = await client.post("/orders", json={"items": [{"product_id": 2, "qty": 1}]}, headers={"X-User": "a"})
        listed = await client.get("/orders/me", headers={"X-User": "a"})
    assert placed.status_code == 200, placed.text
    assert short.status_code == 400, short.text
    assert listed.json() == [placed.json()]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT stock FROM shop_catalog.products ORDER BY id")).scalars().all() == [8, 0]
        assert connection.execute(text("SELECT count(*) FROM shop_orders.order_items")).scalar_one() == 2
    engine.dispose()


def test_downgrade_to_base_and_upgrade_again(custom_schemas: Settings) -> None:
    migrate.upgrade(custom_schemas)
    migrate.downgrade(custom_schemas, "0001")
    engine = create_engine(custom_schemas.database_url)
    assert "status" not in {column["name"] for column in inspect(engine).get_columns("orders", "shop_orders")}
    migrate.upgrade(custom_schemas)
    migrate.downgrade(custom_schemas, "base")
    assert set(inspect(engine).get_table_names("shop_orders")) == {"alembic_version"}
    assert inspect(engine).get_table_names("shop_catalog") == ["products"]
    migrate.upgrade(custom_schemas)
    assert set(inspect(engine).get_table_names("shop_orders")) == OUR_TABLES
    engine.dispose()


def test_deleting_an_order_cascades_to_its_items(database: ProvisionedDatabase) -> None:
    engine = create_engine(database.admin.database_url)
    schema = database.admin.db_schema
    with engine.begin() as connection:
        order_id = connection.execute(
            text(f"INSERT INTO {schema}.orders (user_id, total_cents) VALUES ('cascade', 5) RETURNING id")
        ).scalar_one()
        connection.execute(
            text(f"INSERT INTO {schema}.order_items (order_id, product_id, qty, price_cents) VALUES (:o, 1, 1, 5)"),
            {"o": order_id},
        )
        connection.execute(text(f"DELETE FROM {schema}.orders WHERE id = :o"), {"o": order_id})
        remaining = connection.execute(
            text(f"SELECT count(*) FROM {schema}.order_items WHERE order_id = :o"), {"o": order_id}
        ).scalar_one()
    engine.dispose()
    assert remaining == 0


@pytest.mark.parametrize(
    "cli",
    [
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        [sys.executable, "-m", "litestar", "--app", "orders_service.app:app", "database", "upgrade", "--no-prompt"],
    ],
    ids=["alembic", "litestar database"],
)
def test_command_line_upgrades_use_the_environment(custom_schemas: Settings, cli: list[str]) -> None:
    env = {**os.environ, **custom_schemas.as_env()}
    subprocess.run(cli, cwd=PROJECT_ROOT, env=env, check=True, capture_output=True, timeout=120)
    engine = create_engine(custom_schemas.database_url)
    assert set(inspect(engine).get_table_names("shop_orders")) == OUR_TABLES
    engine.dispose()


def test_the_schema_owner_migrates_without_create_on_the_database(database: ProvisionedDatabase) -> None:
    """The session's database was migrated by its schema's owner (tests.support.database), who cannot create schemas."""
    with psycopg.connect(database.admin.conninfo) as connection:
        may_create, owner = connection.execute(
            "SELECT has_database_privilege(%s, current_database(), 'CREATE'),"
            " (SELECT nspowner::regrole::text FROM pg_namespace WHERE nspname = %s)",
            [database.owner.db_user, database.owner.db_schema],
        ).fetchone() or (None, None)
    assert may_create is False
    assert owner == database.owner.db_user
    # Upgrading again is a no-op that still needs no CREATE on the database.
    migrate.upgrade(database.owner)


def test_the_runtime_role_cannot_change_the_schema(database: ProvisionedDatabase) -> None:
    with (
        psycopg.connect(database.runtime.conninfo) as connection,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        connection.execute(f"CREATE TABLE {database.runtime.db_schema}.intruder (id int)")


def test_print_grants_prints_what_the_runtime_role_was_given(database: ProvisionedDatabase) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orders_service.cli", "print-grants", database.runtime.db_user],
        env={**os.environ, **database.runtime.as_env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == grants_sql(database.runtime, database.runtime.db_user)
    assert (
        f'GRANT SELECT (id, price_cents, stock), UPDATE (stock) ON "catalog".products TO "{database.runtime.db_user}"'
        in result.stdout
    )


def test_a_migration_gives_up_on_a_locked_table_after_the_lock_timeout(database: ProvisionedDatabase) -> None:
    """A migration must not queue every request behind it while a long transaction holds its table."""
    impatient = Settings.from_env({**database.owner.as_env(), "DB_LOCK_TIMEOUT_MS": "200"})
    migrate.downgrade(database.owner, "0001")
    try:
        with psycopg.connect(database.admin.conninfo) as holder:
            holder.execute(f"LOCK TABLE {database.admin.db_schema}.orders IN ACCESS SHARE MODE")
            with pytest.raises(OperationalError, match="lock timeout"):
                migrate.upgrade(impatient)
    finally:
        migrate.upgrade(database.owner)
        # The downgrade dropped a table: its grants went with it, as the README warns.
        with psycopg.connect(database.admin.conninfo) as connection:
            connection.execute(grants_sql(database.admin, database.runtime.db_user).encode())
