"""A column renamed or a privilege revoked under the running service: readiness and orders answer 503 with what is
wrong, never 500 (a deployment fault, not a bug and not the client's)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from orders_service.app import create_app
from orders_service.config import Settings
from tests.support.database import ProvisionedDatabase, provisioned_database


@pytest.fixture
def scratch(server: Settings) -> Iterator[ProvisionedDatabase]:
    with provisioned_database(server) as database:
        with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
            connection.execute(
                f"INSERT INTO {database.admin.catalog_schema}.products (id, price_cents, stock) VALUES (1, 100, 10)"
            )
        yield database


@pytest.fixture
async def client(scratch: ProvisionedDatabase) -> AsyncIterator[AsyncTestClient[Litestar]]:
    async with AsyncTestClient(app=create_app(scratch.runtime)) as client:
        yield client


def alter(database: ProvisionedDatabase, sql: str) -> None:
    with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
        connection.execute(sql)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("ALTER TABLE {catalog}.products RENAME COLUMN price_cents TO price", "table_missing: column"),
        ("REVOKE ALL ON {orders}.outbox FROM {runtime}", "database_unavailable: permission denied"),
    ],
    ids=["column renamed", "privilege revoked"],
)
async def test_a_schema_out_of_step_is_503_with_its_reason(
    client: AsyncTestClient[Litestar], scratch: ProvisionedDatabase, change: str, reason: str
) -> None:
    placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "a"})
    assert placed.status_code == 200
    admin = scratch.admin
    alter(scratch, change.format(catalog=admin.catalog_schema, orders=admin.db_schema, runtime=scratch.runtime.db_user))

    health = await client.get("/health")
    assert health.status_code == 503, health.text
    assert health.json()["reason"].startswith(reason)
    assert health.headers["retry-after"] == "1"
    if "column" in change.lower():
        order = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "a"})
        assert order.status_code == 503, order.text
        assert order.json()["reason"] == "table_missing"
    else:
        cancel = await client.post(f"/orders/{placed.json()['id']}/cancel", headers={"X-User": "a"})
        assert cancel.status_code == 503, cancel.text
        assert cancel.json()["reason"] == "database_unavailable"
        with psycopg.connect(admin.conninfo) as connection:
            status = connection.execute(f"SELECT status FROM {admin.db_schema}.orders").fetchall()
        assert status == [("placed",)]  # nothing half-written


@pytest.mark.parametrize("table", ["orders", "order_items", "idempotency_keys", "outbox", "products"])
async def test_readiness_reads_every_table_the_service_uses(
    client: AsyncTestClient[Litestar], scratch: ProvisionedDatabase, table: str
) -> None:
    """One table the service can no longer read is enough for readiness to say so (and which)."""
    admin = scratch.admin
    schema = admin.catalog_schema if table == "products" else admin.db_schema
    alter(scratch, f"REVOKE SELECT ON {schema}.{table} FROM {scratch.runtime.db_user}")
    health = await client.get("/health")
    assert health.status_code == 503, health.text
    assert health.json()["reason"] == f"database_unavailable: permission denied for table {table}"
