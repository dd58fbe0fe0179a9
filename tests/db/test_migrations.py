"""Alembic migrations: agree with the models, honour DB_SCHEMA/CATALOG_SCHEMA, downgrade, least privilege."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from litestar.testing import AsyncTestClient
from sqlalchemy import create_engine, inspect, text

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.db.grants import AUDIENCES, grants_sql
from orders_service.db.startup_check import check_database_at_start
from orders_service.dev import migrate
from orders_service.dev.demo_catalog import create_products_table
from orders_service.dev.migrate import PROJECT_ROOT
from tests.conftest import OUR_TABLES as CONFTEST_TABLES
from tests.support.database import ProvisionedDatabase, connect_as, grant_as_schema_owner, scratch_database

ALICE = {"X-User": "alice"}
OUR_TABLES = {"alembic_version", *CONFTEST_TABLES}


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


def run_as(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    """``python *args`` from the project's root with ``settings`` as the environment's DB_* and the rest."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=PROJECT_ROOT,
        env={**os.environ, **settings.as_env()},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def print_grants(settings: Settings, role: str, *options: str) -> str:
    """``orders-service print-grants`` as an operator runs it; its standard output."""
    result = run_as(settings, "-m", "orders_service.cli", "print-grants", role, *options)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_print_grants_prints_what_the_runtime_role_was_given(database: ProvisionedDatabase) -> None:
    role = database.runtime.db_user
    everything = print_grants(database.runtime, role)
    parts = {audience: print_grants(database.runtime, role, "--for", audience) for audience in AUDIENCES}
    assert everything == grants_sql(database.runtime, role)
    for audience, part in parts.items():
        assert part == grants_sql(database.runtime, role, audience)
        assert sum(line.startswith("-- [") for line in part.splitlines()) == 1
        assert f"-- [{audience}] Run as " in part
        statements = [line for line in part.splitlines() if line and not line.startswith("--")]
        assert statements
        assert all(statement in everything for statement in statements)
    assert (
        f'GRANT SELECT (id, price_cents, stock), UPDATE (stock) ON "catalog".products TO "{role}"'
        in (parts["catalog-team"])
    )
    assert [everything.index(f"-- [{audience}]") for audience in AUDIENCES] == sorted(
        everything.index(f"-- [{audience}]") for audience in AUDIENCES
    )


def test_a_migration_gives_up_on_a_locked_table_after_the_lock_timeout(
    database: ProvisionedDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    """A migration must not queue every request behind it while a long transaction holds its table; it says so
    in one line and exits 1 (run it again later)."""
    impatient = Settings.from_env({**database.owner.as_env(), "DB_LOCK_TIMEOUT_MS": "200"})
    migrate.downgrade(database.owner, "0001")
    try:
        with psycopg.connect(database.admin.conninfo) as holder:
            holder.execute(f"LOCK TABLE {database.admin.db_schema}.orders IN ACCESS SHARE MODE")
            with pytest.raises(SystemExit) as exited:
                migrate.upgrade(impatient)
            assert exited.value.code == 1
            error = capsys.readouterr().err
            assert "gave up waiting for a lock after DB_LOCK_TIMEOUT_MS (200 ms)" in error
            assert len(error.strip().splitlines()) == 1
    finally:
        migrate.upgrade(database.owner)
        # The downgrade dropped a table: its grants went with it, as deploying.md warns.
        grant_as_schema_owner(database.owner, database.runtime.db_user)


DEPLOYING = PROJECT_ROOT / "docs" / "deploying.md"
SQL_BLOCK = re.compile(r"^[ ]*```sql\n(.*?)^[ ]*```", re.DOTALL | re.MULTILINE)
DOC_ROLES = ("orders_owner", "orders_app", "catalog_team")


def deploying_sql(roles: dict[str, str]) -> list[str]:
    """The SQL blocks of deploying.md's "Database roles" section, in order, with ``roles`` for its role names."""
    text = DEPLOYING.read_text(encoding="utf-8")
    section = text[text.index("## Database roles") : text.index("## Behind PgBouncer")]
    names = re.compile(r"\b(" + "|".join(roles) + r")\b")
    return [names.sub(lambda found: roles[found[1]], textwrap.dedent(block)) for block in SQL_BLOCK.findall(section)]


async def test_a_first_deployment_as_deploying_md_tells_it(server: Settings) -> None:
    """The DBA's and the catalog team's SQL as written, the migrations, each part of print-grants by its role."""
    roles = {name: f"{name}_{uuid.uuid4().hex[:8]}" for name in DOC_ROLES}
    dba_sql, catalog_sql = deploying_sql(roles)
    password = re.findall(r"PASSWORD '([^']+)'", dba_sql)[0]
    try:
        with scratch_database(server) as admin:

            def as_role(name: str) -> Settings:
                return Settings.from_env({**admin.as_env(), "DB_USER": roles[name], "DB_PASS": password})

            owner, runtime, catalog_team = as_role("orders_owner"), as_role("orders_app"), as_role("catalog_team")
            with connect_as(admin) as connection:
                connection.execute(dba_sql.encode())
            with connect_as(catalog_team) as connection:
                connection.execute(catalog_sql.encode())
                connection.execute("INSERT INTO catalog.products (id, price_cents, stock) VALUES (1, 250, 10)")
            migrated = await asyncio.to_thread(run_as, owner, "-m", "alembic", "upgrade", "head")
            assert migrated.returncode == 0, migrated.stderr
            for audience, by in (("schema-owner", owner), ("dba", admin), ("catalog-team", catalog_team)):
                with connect_as(by) as connection:
                    connection.execute(print_grants(runtime, roles["orders_app"], "--for", audience).encode())

            assert check_database_at_start(runtime)
            async with AsyncTestClient(app=create_app(runtime)) as client:
                placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 3}]}, headers=ALICE)
                cancelled = await client.post(f"/orders/{placed.json()['id']}/cancel", headers=ALICE)
                too_many = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 11}]}, headers=ALICE)
            purges = [
                await asyncio.to_thread(run_as, runtime, "-m", "orders_service.cli", command)
                for command in ("purge-idempotency-keys", "purge-events")
            ]
            with connect_as(admin) as connection:
                role_settings = connection.execute(
                    "SELECT unnest(setconfig) FROM pg_db_role_setting WHERE setrole = %s::regrole",
                    [roles["orders_app"]],
                ).fetchall()
    finally:
        with connect_as(server) as connection:
            for role in roles.values():
                connection.execute(f"DROP ROLE IF EXISTS {role}".encode())
    assert placed.status_code == 200, placed.text
    assert cancelled.status_code == 200, cancelled.text
    assert too_many.status_code == 400, too_many.text
    assert [(purge.returncode, purge.stderr) for purge in purges] == [(0, ""), (0, "")]
    assert sorted(setting for (setting,) in role_settings) == ["lock_timeout=5000", "statement_timeout=30000"]
