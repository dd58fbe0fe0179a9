"""Lock order, observed from outside: products locked in ascending id order, FOR NO KEY UPDATE, deadlocks retried.

The database here has index scans off and its products stored in descending id order, so a
statement that relied on the scan instead of ``ORDER BY id`` would lock them in the wrong order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import psycopg
import pytest

from orders_service.config import Settings
from orders_service.db.engine import APPLICATION_NAME
from tests.support.database import ProvisionedDatabase, provisioned_database
from tests.support.granian import GranianServer, start_granian
from tests.support.scrape import scrape

Client = httpx.AsyncClient


@pytest.fixture(scope="module")
def scan_ordered(server: Settings) -> Iterator[ProvisionedDatabase]:
    with provisioned_database(server) as database:
        with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
            for setting in ("enable_indexscan", "enable_indexonlyscan"):
                connection.execute(f'ALTER DATABASE "{database.admin.db_name}" SET {setting} = off')
        yield database


@pytest.fixture(scope="module")
def service(scan_ordered: ProvisionedDatabase, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GranianServer]:
    with start_granian(scan_ordered.runtime, workers=1, metrics_dir=tmp_path_factory.mktemp("metrics")) as server:
        yield server


@pytest.fixture
async def client(scan_ordered: ProvisionedDatabase, service: GranianServer) -> AsyncIterator[httpx.AsyncClient]:
    """The real service under Granian (Litestar's in-process test client blocks the test's event loop)."""
    admin = scan_ordered.admin
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(
            f"TRUNCATE {admin.db_schema}.orders, {admin.db_schema}.order_items, {admin.db_schema}.idempotency_keys,"
            f" {admin.catalog_schema}.products CASCADE"
        )
        for product_id in (3, 2, 1):  # stored in descending id order
            connection.execute(
                f"INSERT INTO {admin.catalog_schema}.products (id, price_cents, stock) VALUES (%s, 100, 10)",
                [product_id],
            )
    async with httpx.AsyncClient(base_url=service.base_url, timeout=60) as client:
        yield client


def admin_connection(database: ProvisionedDatabase) -> psycopg.Connection:
    return psycopg.connect(database.admin.conninfo)


async def until_the_service_waits_for_a_lock(database: ProvisionedDatabase, waiters: int = 1) -> None:
    deadline = time.monotonic() + 20
    with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
        while time.monotonic() < deadline:
            (count,) = connection.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name = %s AND wait_event_type = 'Lock' AND datname = current_database()",
                [APPLICATION_NAME],
            ).fetchone() or (0,)
            if count >= waiters:
                return
            await asyncio.sleep(0.02)  # polling the server's view of the order
    raise AssertionError("the order never waited for a lock")


def stock(database: ProvisionedDatabase) -> dict[int, int]:
    with admin_connection(database) as connection:
        rows = connection.execute(f"SELECT id, stock FROM {database.admin.catalog_schema}.products").fetchall()
    return dict(rows)


async def test_an_order_waiting_for_a_product_holds_none_of_its_other_products(
    client: Client, scan_ordered: ProvisionedDatabase
) -> None:
    """Hold-and-wait: an order for [1, 2, 3] waiting for product 2 must hold neither 1 (before it) nor 3 (after it)."""
    catalog = scan_ordered.admin.catalog_schema
    with admin_connection(scan_ordered) as holder:
        holder.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 3, "qty": 1}, {"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 1}]},
                headers={"X-User": "ordered"},
            )
        )
        await until_the_service_waits_for_a_lock(scan_ordered)
        with admin_connection(scan_ordered) as prober:
            for other in (1, 3):
                prober.execute(f"SELECT 1 FROM {catalog}.products WHERE id = {other} FOR UPDATE NOWAIT")
            prober.rollback()
        holder.rollback()
        response = await order
    assert response.status_code == 200
    assert stock(scan_ordered) == {1: 9, 2: 9, 3: 9}


async def until_the_service_waits_for(database: ProvisionedDatabase, holder: psycopg.Connection) -> None:
    """Until a transaction waits for one that ``holder`` runs (a row lock's wait is on the holder's xid)."""
    (xid,) = holder.execute("SELECT pg_current_xact_id()::text").fetchone() or ("",)
    deadline = time.monotonic() + 20
    with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
        while time.monotonic() < deadline:
            waits = connection.execute(
                "SELECT 1 FROM pg_locks WHERE locktype = 'transactionid' AND NOT granted AND transactionid = %s::xid",
                [xid],
            ).fetchone()
            if waits:
                return
            await asyncio.sleep(0.02)  # polling the server's view of the order
    raise AssertionError(f"nothing waited for transaction {xid}")


async def test_a_retry_never_holds_a_product_got_earlier_while_it_waits_for_one_it_never_got(
    client: Client, scan_ordered: ProvisionedDatabase
) -> None:
    """Products taken by turns: the first try waits for 1 and finds 2 and 3 busy; the second waits for 2 and
    finds 3 busy; the third waits for 3, which may be held for long (a catalog job): alone, holding 1 and 2
    neither, so orders for them go on."""
    catalog = scan_ordered.admin.catalog_schema
    holders = {product_id: admin_connection(scan_ordered) for product_id in (1, 2, 3)}
    try:
        for product_id, holder in holders.items():
            holder.execute(f"SELECT 1 FROM {catalog}.products WHERE id = {product_id} FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": p, "qty": 1} for p in (1, 2, 3)]},
                headers={"X-User": "by-turns"},
            )
        )
        await until_the_service_waits_for(scan_ordered, holders[1])
        holders[1].rollback()
        await until_the_service_waits_for(scan_ordered, holders[2])
        holders[2].rollback()
        await until_the_service_waits_for(scan_ordered, holders[3])
        others = [
            await client.post("/orders", json={"items": [{"product_id": p, "qty": 1}]}, headers={"X-User": "other"})
            for p in (1, 2)
        ]
        assert [response.status_code for response in others] == [200, 200]  # served while the order waits for 3
        assert not order.done()
        holders[3].rollback()
        response = await order
    finally:
        for holder in holders.values():
            holder.close()
    assert response.status_code == 200
    assert stock(scan_ordered) == {1: 8, 2: 8, 3: 9}


async def test_a_retry_that_got_a_product_earlier_waits_for_one_row_again_holding_nothing(
    client: Client, scan_ordered: ProvisionedDatabase
) -> None:
    """Products 1 and 2 taken by turns: 2, then 1, then 2 again for long (a catalog job). The order for [1, 2] waits
    for each alone: at the end for 2, holding 1 no more than before, so an order for 1 alone is served meanwhile
    (a retry that had got 2 once used to wait for both, locking 1 while 2 was held)."""
    catalog = scan_ordered.admin.catalog_schema
    holders = [admin_connection(scan_ordered) for _ in range(3)]
    try:
        first_2, then_1, long_2 = holders
        first_2.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 1, "qty": 1}, {"product_id": 2, "qty": 1}]},
                headers={"X-User": "by-turns"},
            )
        )
        await until_the_service_waits_for(scan_ordered, first_2)
        then_1.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 1 FOR UPDATE")
        first_2.rollback()
        await until_the_service_waits_for(scan_ordered, then_1)
        long_2.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        then_1.rollback()
        await until_the_service_waits_for(scan_ordered, long_2)
        with admin_connection(scan_ordered) as prober:
            prober.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 1 FOR UPDATE NOWAIT")
            prober.rollback()
        other = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "o"})
        assert other.status_code == 200
        assert not order.done()
        long_2.rollback()
        response = await order
    finally:
        for holder in holders:
            holder.close()
    assert response.status_code == 200
    assert stock(scan_ordered) == {1: 8, 2: 9, 3: 10}


async def test_a_cancellation_waiting_for_a_product_holds_none_of_its_other_products(
    client: Client, scan_ordered: ProvisionedDatabase
) -> None:
    catalog = scan_ordered.admin.catalog_schema
    placed = await client.post(
        "/orders",
        json={"items": [{"product_id": 1, "qty": 2}, {"product_id": 3, "qty": 1}]},
        headers={"X-User": "canceller"},
    )
    assert placed.status_code == 200
    with admin_connection(scan_ordered) as holder:
        holder.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 3 FOR UPDATE")
        cancel = asyncio.create_task(
            client.post(f"/orders/{placed.json()['id']}/cancel", headers={"X-User": "canceller"})
        )
        await until_the_service_waits_for_a_lock(scan_ordered)
        with admin_connection(scan_ordered) as prober:
            prober.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 1 FOR UPDATE NOWAIT")
            prober.rollback()
        other = await client.post(
            "/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "meanwhile"}
        )
        assert other.status_code == 200  # served while the cancellation still waits
        assert not cancel.done()
        holder.rollback()
        response = await cancel
    assert response.status_code == 200
    assert response.json()["status"] == "cancelled"
    assert stock(scan_ordered) == {1: 9, 2: 10, 3: 10}


async def test_waiting_orders_do_not_block_the_catalogs_foreign_key_inserts(
    client: Client, scan_ordered: ProvisionedDatabase
) -> None:
    """FOR NO KEY UPDATE: the catalog team can still insert rows that reference a product being ordered."""
    catalog = scan_ordered.admin.catalog_schema
    with admin_connection(scan_ordered) as connection:
        connection.execute(
            f"CREATE TABLE IF NOT EXISTS {catalog}.product_images (product_id int REFERENCES {catalog}.products (id))"
        )
        connection.commit()
    with admin_connection(scan_ordered) as holder:
        holder.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 1, "qty": 1}, {"product_id": 2, "qty": 1}]},
                headers={"X-User": "fk"},
            )
        )
        await until_the_service_waits_for_a_lock(scan_ordered)  # waiting for product 2
        with admin_connection(scan_ordered) as catalog_team:
            catalog_team.execute("SET lock_timeout = '1s'")
            catalog_team.execute(f"INSERT INTO {catalog}.product_images (product_id) VALUES (1)")
            catalog_team.commit()
        holder.rollback()
        response = await order
    assert response.status_code == 200


def deadlock_retries(service: GranianServer) -> float:
    return scrape(service).get(("db_transaction_retries_total", (("cause", "deadlock"),)), 0.0)


async def test_an_outside_writer_locking_in_another_order_does_not_deadlock_an_order(
    client: Client, scan_ordered: ProvisionedDatabase, service: GranianServer
) -> None:
    """The outside writer locks product 2 then 1; the order for [1, 2] waits for 2 holding nothing, so 1 stays free."""
    catalog = scan_ordered.admin.catalog_schema
    retries_before = deadlock_retries(service)
    with admin_connection(scan_ordered) as writer:
        writer.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 1}]},
                headers={"X-User": "no-victim"},
            )
        )
        await until_the_service_waits_for_a_lock(scan_ordered)
        writer.execute("SET lock_timeout = '2s'")  # product 1 must be free: no wait, no deadlock
        writer.execute(f"UPDATE {catalog}.products SET stock = stock - 5 WHERE id = 1")
        writer.commit()
        response = await order
    assert response.status_code == 200
    assert deadlock_retries(service) == retries_before
    assert stock(scan_ordered) == {1: 4, 2: 9, 3: 10}


async def test_an_order_writes_its_key_only_after_its_wait_so_a_writer_never_waits_for_it(
    client: Client, scan_ordered: ProvisionedDatabase, service: GranianServer
) -> None:
    """The order waits for product 2, which the writer holds: it holds nothing meanwhile, not even its
    Idempotency-Key, so the writer inserts that key without waiting (lock_timeout 1 s) and nothing deadlocks."""
    catalog, orders = scan_ordered.admin.catalog_schema, scan_ordered.admin.db_schema
    retries_before = deadlock_retries(service)
    with admin_connection(scan_ordered) as writer:
        writer.execute(f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 2, "qty": 1}]},
                headers={"X-User": "victim", "Idempotency-Key": "deadlocked"},
            )
        )
        await until_the_service_waits_for_a_lock(scan_ordered)
        writer.execute("SET lock_timeout = '1s'")
        writer.execute(
            f"INSERT INTO {orders}.idempotency_keys (user_id, key, request_hash) VALUES ('victim', 'deadlocked', 'x')"
        )
        writer.rollback()
        response = await order
    assert response.status_code == 200
    assert deadlock_retries(service) == retries_before
    assert stock(scan_ordered) == {1: 10, 2: 9, 3: 10}


async def test_a_deadlock_with_an_outside_writer_is_retried_and_the_order_placed(
    client: Client, scan_ordered: ProvisionedDatabase, service: GranianServer
) -> None:
    """The writer has inserted the order's Idempotency-Key (not committed): the order locks product 2, then waits
    for the key; the writer then wants product 2. PostgreSQL aborts the order (the writer's deadlock_timeout is
    longer), which is retried: it waits for product 2 alone, and is placed once the writer rolls back."""
    catalog, orders = scan_ordered.admin.catalog_schema, scan_ordered.admin.db_schema
    retries_before = deadlock_retries(service)
    with admin_connection(scan_ordered) as writer:
        writer.execute("SET deadlock_timeout = '60s'")  # so that the order's backend is the one that detects it
        writer.execute(
            f"INSERT INTO {orders}.idempotency_keys (user_id, key, request_hash) VALUES ('victim', 'deadlocked', 'x')"
        )
        order = asyncio.create_task(
            client.post(
                "/orders",
                json={"items": [{"product_id": 2, "qty": 1}]},
                headers={"X-User": "victim", "Idempotency-Key": "deadlocked"},
            )
        )
        await until_the_service_waits_for_a_lock(scan_ordered)  # for the key: the writer's transaction
        # Blocks until the order is aborted as the deadlock victim, which releases product 2.
        await asyncio.to_thread(writer.execute, f"SELECT 1 FROM {catalog}.products WHERE id = 2 FOR UPDATE")
        writer.rollback()
        response = await order
    assert response.status_code == 200
    assert deadlock_retries(service) - retries_before >= 1
    assert stock(scan_ordered) == {1: 10, 2: 9, 3: 10}
    with admin_connection(scan_ordered) as connection:
        assert connection.execute(f"SELECT count(*) FROM {orders}.orders").fetchone() == (1,)
