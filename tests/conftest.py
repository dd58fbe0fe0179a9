"""Fixtures: a real PostgreSQL, the migrated schema, a clean catalog per test, the app in-process or under Granian."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import Engine, create_engine, text

from orders_service import migrate
from orders_service.app import create_app
from orders_service.catalog import create_products_table
from orders_service.config import Settings
from tests.database import postgres_server, scratch_database
from tests.granian import GranianServer, start_granian

OUR_TABLES = ("orders", "order_items", "idempotency_keys")


@pytest.fixture(scope="session")
def server() -> Iterator[Settings]:
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def settings(server: Settings) -> Iterator[Settings]:
    """A fresh database with the catalog table and our migrations applied."""
    with scratch_database(server) as settings:
        engine = create_engine(settings.database_url)
        with engine.begin() as connection:
            create_products_table(connection, settings)
        engine.dispose()
        migrate.upgrade(settings)
        yield settings


@pytest.fixture(scope="session")
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def catalog(engine: Engine, settings: Settings) -> Catalog:
    """Empty orders and products tables; use ``catalog.stock(...)`` to add products."""
    with engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(f'{settings.db_schema}.{table}' for table in OUR_TABLES)}"))
        connection.execute(text(f"TRUNCATE {settings.catalog_schema}.products"))
    return Catalog(engine, settings)


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


@pytest.fixture(scope="session")
def app(settings: Settings) -> Litestar:
    return create_app(settings)


@pytest.fixture
async def client(app: Litestar, catalog: Catalog) -> AsyncIterator[AsyncTestClient[Litestar]]:
    """The app in-process (real PostgreSQL), for request/response behaviour."""
    async with AsyncTestClient(app=app) as client:
        yield client


@pytest.fixture(scope="session")
def granian(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GranianServer]:
    """The real service under Granian with 2 workers, shared by the end-to-end tests."""
    with start_granian(settings, workers=2, metrics_dir=tmp_path_factory.mktemp("metrics")) as server:
        yield server
