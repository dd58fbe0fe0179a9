"""Fixtures: a real PostgreSQL, the migrated schema, a clean catalog per test, the app in-process or under Granian."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from typing import cast

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import Engine, create_engine, text

from orders_service.app import create_app
from orders_service.config import Settings
from tests.support.database import ProvisionedDatabase, postgres_server, provisioned_database
from tests.support.granian import GranianServer, start_granian
from tests.support.pgbouncer import pgbouncer, plain_binary, prepared_binary

OUR_TABLES = ("orders", "order_items", "idempotency_keys", "outbox", "outbox_relay_lease", "user_writes")


@pytest.fixture(scope="session")
def server() -> Iterator[Settings]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def database(server: Settings) -> Iterator[ProvisionedDatabase]:
    """A fresh database, migrated by its schema's owner, with a least-privilege runtime role."""
    with provisioned_database(server) as database:
        yield database


@pytest.fixture(scope="session")
def settings(database: ProvisionedDatabase) -> Settings:
    """What the service runs with: the runtime role, with only the privileges `print-grants` gives."""
    return database.runtime


@pytest.fixture(scope="session")
def engine(database: ProvisionedDatabase) -> Iterator[Engine]:
    """The tests' own access (a superuser): setting up products, checking invariants."""
    engine = create_engine(database.admin.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def catalog(engine: Engine, settings: Settings) -> Catalog:
    """Empty orders and products tables; use ``catalog.stock(...)`` to add products."""
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(f'{settings.db_schema}.{table}' for table in OUR_TABLES)}"))
        connection.execute(text(f"TRUNCATE {settings.catalog_schema}.products"))
    return Catalog(engine, settings)


STOCK_CHECK = "products_stock_check"


@pytest.fixture(params=["with CHECK (stock >= 0)", "without a stock CHECK"])
def stock_check(request: pytest.FixtureRequest, catalog: Catalog) -> Iterator[bool]:
    """Run the test against the catalog with ``CHECK (stock >= 0)`` and without it: the catalog team's table may
    have none, and with one an oversell would show only as a statement error."""
    checked = request.param.startswith("with ")
    if not checked:
        with catalog.engine.begin() as connection:
            connection.execute(text(f"ALTER TABLE {catalog.catalog_schema}.products DROP CONSTRAINT {STOCK_CHECK}"))
    try:
        yield checked
    finally:
        if not checked:
            with catalog.engine.begin() as connection:
                connection.execute(
                    text(
                        f"ALTER TABLE {catalog.catalog_schema}.products ADD CONSTRAINT {STOCK_CHECK} CHECK (stock >= 0)"
                    )
                )


class Catalog:
    """Reads and writes the test database directly, to set up products and check invariants."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self.engine = engine
        self.orders_schema = settings.db_schema
        self.catalog_schema = settings.catalog_schema

    def add(self, product_id: int, *, price_cents: int = 100, stock: int = 10) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                text(
                    f"INSERT INTO {self.catalog_schema}.products (id, price_cents, stock) VALUES (:id, :price, :stock)"
                ),
                {"id": product_id, "price": price_cents, "stock": stock},
            )

    def set_price(self, product_id: int, price_cents: int) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                text(f"UPDATE {self.catalog_schema}.products SET price_cents = :price WHERE id = :id"),
                {"id": product_id, "price": price_cents},
            )

    def stock(self, product_id: int) -> int:
        with self.engine.connect() as connection:
            value = connection.execute(
                text(f"SELECT stock FROM {self.catalog_schema}.products WHERE id = :id"), {"id": product_id}
            ).scalar_one()
        return int(value)

    def scalar(self, sql: str, **params: object) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(text(sql.format(orders=self.orders_schema)), params).scalar_one())

    def order_count(self) -> int:
        return self.scalar("SELECT count(*) FROM {orders}.orders")

    def item_count(self) -> int:
        return self.scalar("SELECT count(*) FROM {orders}.order_items")

    def units_ordered(self, product_id: int) -> int:
        return self.scalar(
            "SELECT coalesce(sum(qty), 0) FROM {orders}.order_items WHERE product_id = :pid", pid=product_id
        )


# How the service reaches PostgreSQL. Modules that set ROUTES run their `route`-dependent tests once per route.
DIRECT, PGBOUNCER, PGBOUNCER_PREPARED = "direct", "pgbouncer", "pgbouncer-prepared"
ALL_ROUTES = (DIRECT, PGBOUNCER, PGBOUNCER_PREPARED)
REQUIRE_EVERYTHING_ENV = "ORDERS_TESTS_REQUIRE_EVERYTHING"


RUN_LAST = "test_every_status_this_run_observed_is_documented"


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture scope
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The OpenAPI completeness check looks at what every other test made the service answer: run it last."""
    items.sort(key=lambda item: getattr(item, "originalname", item.name) == RUN_LAST)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    def names(argnames: str | tuple[str, ...]) -> list[str]:
        return argnames.replace(" ", "").split(",") if isinstance(argnames, str) else list(argnames)

    explicit = {name for marker in metafunc.definition.iter_markers("parametrize") for name in names(marker.args[0])}
    if "route" in metafunc.fixturenames and "route" not in explicit:
        routes = getattr(metafunc.module, "ROUTES", (DIRECT,))
        metafunc.parametrize("route", routes, indirect=True, scope="session")


def unavailable(reason: str) -> None:
    """Skip a test whose outside component is missing here; in CI (which installs everything) fail instead."""
    if os.environ.get(REQUIRE_EVERYTHING_ENV):
        pytest.fail(f"{reason} (CI must provide it)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def route(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", DIRECT))


@pytest.fixture(scope="session")
def pgbouncer_plain(database: ProvisionedDatabase) -> Iterator[Settings]:
    binary = plain_binary()
    if binary is None:
        unavailable("pgbouncer is not installed")
    assert binary is not None
    with pgbouncer(binary, database.runtime, [database.runtime, database.admin], prepared=False) as settings:
        yield settings


@pytest.fixture(scope="session")
def pgbouncer_with_prepared_statements(database: ProvisionedDatabase) -> Iterator[Settings]:
    binary = prepared_binary()
    if binary is None:
        unavailable("no PgBouncer >= 1.21 (set PGBOUNCER_PREPARED to one; .ci/run builds 1.24)")
    assert binary is not None
    with pgbouncer(binary, database.runtime, [database.runtime, database.admin], prepared=True) as settings:
        yield settings


@pytest.fixture(scope="session")
def service_settings(route: str, settings: Settings, request: pytest.FixtureRequest) -> Settings:
    """The settings the service runs with on ``route``: straight to PostgreSQL, or through PgBouncer."""
    if route == PGBOUNCER:
        return cast("Settings", request.getfixturevalue("pgbouncer_plain"))
    if route == PGBOUNCER_PREPARED:
        return cast("Settings", request.getfixturevalue("pgbouncer_with_prepared_statements"))
    return settings


@pytest.fixture(scope="session")
def app(service_settings: Settings) -> Litestar:
    return create_app(service_settings)


@pytest.fixture
async def client(app: Litestar, catalog: Catalog) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app in-process (real PostgreSQL), for request/response behaviour."""
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(scope="session")
def granian(service_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GranianServer]:
    """The real service under Granian with 2 workers, shared by the end-to-end tests (one per route)."""
    # Bursts of 200 requests queue for 2 x DB_POOL_SIZE connections: let them wait.
    patient = Settings.from_env({**service_settings.as_env(), "DB_POOL_TIMEOUT": "30"})
    with start_granian(patient, workers=2, metrics_dir=tmp_path_factory.mktemp("metrics")) as server:
        yield server
