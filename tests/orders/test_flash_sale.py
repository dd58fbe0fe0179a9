"""Flash sales: the orders of one product that queue while its transaction runs are placed in one transaction.

The service runs in-process (``WorkerComponents``) against the real database. A catalog job
holds product 1's row, so the first order waits on it and the next ones queue in the worker
in a known order; releasing the row lets them through. Invariants are read in the database,
including which transaction wrote each order (``xmin``).
"""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text

from orders_service.config import Settings
from orders_service.db.transactions import StatementFailed
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.orders.errors import IdempotencyKeyReused, OrderRejected
from orders_service.orders.schemas import PG_INT_MAX, OrderLine
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase, backends_waiting_for_a_lock
from tests.support.faults import wait_until
from tests.support.in_process import (
    HOT,
    Order,
    hold,
    order_service,
    place,
    place_behind_a_held_row,
    transactions_of,
)


@pytest.mark.usefixtures("stock_check")
@pytest.mark.parametrize("batch_wait_ms", ["0", "20"])
async def test_queued_orders_are_decided_in_arrival_order_in_one_transaction(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog, batch_wait_ms: str
) -> None:
    """10 units: the first order takes 1, then 5 (accepted), 5 (only 4 left), 3, 1, 4 (none left); also when
    the next transaction waits ORDER_BATCH_WAIT_MS for more orders."""
    catalog.add(HOT, price_cents=100, stock=10)
    queued = [(f"buyer-{n}", {HOT: qty}, None) for n, qty in enumerate([5, 5, 3, 1, 4])]
    waiting = Settings.from_env({**settings.as_env(), "ORDER_BATCH_WAIT_MS": batch_wait_ms})

    async with order_service(waiting) as orders:
        results = await place_behind_a_held_row(orders, database, catalog, ("first", {HOT: 1}, None), queued)

    placed = [isinstance(result, tuple) for result in results]
    assert placed == [True, True, False, True, True, False]
    for result in (results[2], results[5]):
        assert isinstance(result, OrderRejected)
        assert (result.reason, result.product_ids) == ("insufficient_stock", [HOT])
    assert catalog.stock(HOT) == 0
    assert catalog.order_count() == 4
    assert catalog.units_ordered(HOT) == 10
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.outbox") == 4
    batch = transactions_of(catalog, ["buyer-0", "buyer-2", "buyer-3"])
    assert len(set(batch)) == 1
    assert None not in batch
    assert transactions_of(catalog, ["first"]) != batch[:1]


async def test_idempotent_twins_and_a_bad_order_in_one_batch(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """A twin of a queued order replays it; a twin with other lines is refused; an order whose total overflows
    is refused alone; a key already committed replays; the others are placed."""
    catalog.add(HOT, price_cents=100, stock=100)
    for product_id in (3, 4, 5):
        catalog.add(product_id, price_cents=PG_INT_MAX, stock=PG_INT_MAX)
    async with order_service(settings) as orders:
        (earlier, _) = await orders.place_order("dave", [OrderLine(HOT, 1)], "dave-1")
        (zeds, _) = await orders.place_order("zed", [OrderLine(HOT, 2)], "k")  # alice's key, another user's order
        too_large = {HOT: 1, 3: PG_INT_MAX, 4: PG_INT_MAX, 5: PG_INT_MAX}
        queued: list[Order] = [
            ("alice", {HOT: 2}, "k"),
            ("bob", too_large, "bob-1"),
            ("alice", {HOT: 2}, "k"),  # twin: the same order
            ("carol", {HOT: 1}, "k"),  # the same key, another user: another order
            ("alice", {HOT: 3}, "k"),  # the same key, other lines
            ("dave", {HOT: 1}, "dave-1"),  # committed before
            ("erin", {HOT: 1}, None),
        ]
        results = await place_behind_a_held_row(orders, database, catalog, ("first", {HOT: 1}, None), queued)
        # bob's rejected order stored nothing: its key places another body
        (bobs, bob_replayed) = await orders.place_order("bob", [OrderLine(HOT, 1)], "bob-1")

    _first, alice, bob, alice_twin, carol, alice_other, dave, erin = results
    assert alice[1] is False
    assert alice[0].id != zeds.id
    assert alice[0].user_id == "alice"
    assert bob_replayed is False
    assert alice_twin == (alice[0], True)
    assert isinstance(bob, OrderRejected)
    assert bob.reason == "total_too_large"
    assert carol[1] is False
    assert carol[0].id != alice[0].id
    assert isinstance(alice_other, IdempotencyKeyReused)
    assert dave == (earlier, True)
    assert erin[1] is False
    assert catalog.stock(HOT) == 100 - 1 - 2 - 1 - 2 - 1 - 1 - 1
    assert catalog.order_count() == 7  # dave's, zed's, first, alice, carol, erin, bob's second
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.orders WHERE user_id = 'bob'") == 1
    assert catalog.scalar(f"SELECT order_id FROM {catalog.orders_schema}.idempotency_keys WHERE key = 'bob-1'") == (
        bobs.id
    )
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.idempotency_keys") == 5
    assert all(catalog.stock(product_id) == PG_INT_MAX for product_id in (3, 4, 5))
    assert len(set(transactions_of(catalog, ["alice", "carol", "erin"]))) == 1  # the twins waited for the next batch


async def test_an_order_that_fails_the_statement_fails_alone(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """A value the table refuses (here a user id longer than the column, which the API's guard would stop) fails
    the batch's statement: its orders are placed again one by one, and only that one fails."""
    catalog.add(HOT, price_cents=100, stock=10)
    queued = [("amy", {HOT: 1}, "a"), ("x" * 300, {HOT: 1}, None), ("ben", {HOT: 2}, None)]
    transactions_before = REGISTRY.get_sample_value("orders_per_transaction_count") or 0

    async with order_service(settings) as orders:
        results = await place_behind_a_held_row(orders, database, catalog, ("first", {HOT: 1}, None), queued)

    assert [type(result) for result in results] == [tuple, tuple, StatementFailed, tuple]
    # Each transaction that decided orders counted once: the first's, then amy's and ben's alone.
    assert (REGISTRY.get_sample_value("orders_per_transaction_count") or 0) - transactions_before == 3
    assert catalog.stock(HOT) == 10 - 1 - 1 - 2
    assert catalog.order_count() == 3
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.outbox") == 3


async def test_a_connection_lost_mid_batch_answers_each_order_that_its_outcome_is_unknown(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """The batch's backend is terminated while it waits on the row: every order of it answers 503, outcome
    unknown, nothing was written, and retrying with the same keys places each order once."""
    catalog.add(HOT, price_cents=100, stock=50)
    catalog.add(2, price_cents=300, stock=50)
    queued: list[Order] = [(f"buyer-{n}", {HOT: 1, 2: n % 2 + 1} if n % 3 else {HOT: 2}, f"key-{n}") for n in range(6)]

    def terminate_the_waiting_backend() -> int:
        with catalog.engine.connect() as dba:
            (pid,) = backends_waiting_for_a_lock(database)
            assert dba.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
        return pid

    async with order_service(settings) as orders:
        with catalog.engine.connect() as catalog_job:
            hold(catalog_job, catalog, HOT)
            first = place(orders, ("first", {HOT: 1}, "first"))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "the first order waiting")
            tasks = [place(orders, order) for order in queued]
            await wait_until(lambda: orders.queues.waiting == len(queued), 30, "the orders queued")
            firsts = terminate_the_waiting_backend()  # the first order's: the batch starts and waits on the row
            await wait_until(
                lambda: orders.queues.queued(HOT) == 0 and backends_waiting_for_a_lock(database) not in ([], [firsts]),
                30,
                "the batch waiting on the row",
            )
            terminate_the_waiting_backend()
            results = await asyncio.gather(first, *tasks, return_exceptions=True)
            catalog_job.rollback()
        assert catalog.order_count() == 0
        assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.idempotency_keys") == 0
        for result in results:
            assert isinstance(result, DatabaseUnavailable)
            assert (result.cause, result.outcome_unknown) == ("database_unavailable", True)

        retried = await asyncio.gather(*(place(orders, order) for order in [("first", {HOT: 1}, "first"), *queued]))

    assert all(replayed is False for _, replayed in retried)
    assert catalog.order_count() == 7
    assert catalog.stock(HOT) == 50 - 1 - sum(lines[HOT] for _, lines, _ in queued)
    assert catalog.stock(2) == 50 - sum(lines.get(2, 0) for _, lines, _ in queued)
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.outbox") == 7


@pytest.mark.parametrize("max_orders", ["1"])
async def test_order_batch_max_1_places_every_order_alone(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog, max_orders: str
) -> None:
    catalog.add(HOT, price_cents=100, stock=10)
    alone = Settings.from_env({**settings.as_env(), "ORDER_BATCH_MAX": max_orders})
    queued = [(f"buyer-{n}", {HOT: 1}, None) for n in range(3)]

    async with order_service(alone) as orders:
        results = await place_behind_a_held_row(orders, database, catalog, ("first", {HOT: 1}, None), queued)

    assert all(isinstance(result, tuple) for result in results)
    assert len(set(transactions_of(catalog, ["first", *(user for user, _, _ in queued)]))) == 4


async def test_orders_that_find_every_connection_in_use_share_the_next_transaction_whatever_their_products(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """One connection, taken by an order waiting on a held row: the orders of other products that arrive
    meanwhile wait for the next connection together and are placed in one transaction, which waits for no
    row: an order whose product another transaction holds is skipped and tries again alone."""
    for product_id, stock in ((2, 10), (3, 1), (5, 10), (9, 10)):
        catalog.add(product_id, price_cents=100, stock=stock)
    one_connection = Settings.from_env({**settings.as_env(), "DB_POOL_SIZE": "1"})

    async with order_service(one_connection) as orders:
        with catalog.engine.connect() as job_on_9, catalog.engine.connect() as job_on_5:
            hold(job_on_9, catalog, 9)
            hold(job_on_5, catalog, 5)
            first = place(orders, ("first", {9: 1}, None))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "the first order waiting")
            assert orders.orders.runner.saturated
            # All four arrive before the next transaction forms (one turn of the event loop).
            queued = [
                place(orders, order)
                for order in [
                    ("bea", {2: 1}, None),
                    ("cal", {3: 2}, None),
                    ("eve", {5: 1}, None),
                    ("fay", {2: 3}, None),
                ]
            ]
            job_on_9.rollback()
            first_result = await first
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "eve's retry waiting on 5")
            job_on_5.rollback()
            bea, cal, eve, fay = await asyncio.gather(*queued, return_exceptions=True)

    assert first_result[1] is False
    assert isinstance(cal, OrderRejected)
    assert (cal.reason, cal.product_ids) == ("insufficient_stock", [3])
    for result in (bea, eve, fay):
        assert isinstance(result, tuple)
    assert (catalog.stock(2), catalog.stock(3), catalog.stock(5), catalog.stock(9)) == (6, 1, 9, 9)
    assert catalog.order_count() == 4
    bea_tx, eve_tx, fay_tx = transactions_of(catalog, ["bea", "eve", "fay"])
    assert bea_tx == fay_tx
    assert eve_tx != bea_tx
