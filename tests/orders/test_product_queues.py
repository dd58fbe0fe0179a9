"""The product queues (``ProductQueues``): arrival order per product, keys never held across a wait, bounded queues.

The service runs in-process (``WorkerComponents``, one per simulated worker) against the real
database; a catalog job (another session) holds a product's row with ``SELECT … FOR UPDATE``.
Answers and the database are checked: stock exact, every 200 order once, nothing written for a
rejected order.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY

from orders_service.config import Settings
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.orders.errors import IdempotencyKeyReused, OrderRejected
from orders_service.orders.schemas import OrderRead
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase, backends_waiting_for_a_lock
from tests.support.faults import wait_until
from tests.support.in_process import HOT, Order, hold, order_service, place, place_behind_a_held_row

X, Y = 1, 2


def waiting_gauge() -> float:
    return REGISTRY.get_sample_value("product_gate_requests_waiting") or 0.0


def keys_stored(catalog: Catalog) -> int:
    return catalog.scalar("SELECT count(*) FROM {orders}.idempotency_keys")


@pytest.mark.usefixtures("stock_check")
async def test_a_twin_held_back_keeps_its_place_in_line(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """Three units, the first order takes one: A (key K, 5 units: refused), A' (K, 1 unit: placed once A is refused),
    N1 (1 unit: the last), N2 (1 unit: refused). A' keeps its place although it waited for A's answer."""
    catalog.add(HOT, stock=3)
    queued: list[Order] = [
        ("alice", {HOT: 5}, "K"),
        ("alice", {HOT: 1}, "K"),
        ("n1", {HOT: 1}, None),
        ("n2", {HOT: 1}, None),
    ]
    async with order_service(settings) as orders:
        first, a, a_twin, n1, n2 = await place_behind_a_held_row(
            orders, database, catalog, ("f", {HOT: 1}, None), queued
        )

    assert isinstance(first, tuple)
    assert isinstance(a, OrderRejected)
    assert a.reason == "insufficient_stock"
    assert isinstance(a_twin, tuple)
    assert a_twin[1] is False
    assert isinstance(n1, tuple)
    assert isinstance(n2, OrderRejected)
    assert n2.reason == "insufficient_stock"
    assert catalog.stock(HOT) == 0
    assert catalog.order_count() == 3
    assert keys_stored(catalog) == 1  # A' only: a rejected order wrote no key


@pytest.mark.usefixtures("stock_check")
async def test_an_order_skipped_as_busy_keeps_its_place_in_line(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """M = {x: 2, y: 1} finds y held (briefly, by a catalog job) and waits for it; N = {x: 1} arrives later. Two
    units of x: N must not take what M, before it, wants. M is placed once y is free; N is refused."""
    catalog.add(X, stock=2)
    catalog.add(Y, stock=5)
    async with order_service(settings) as orders:
        with catalog.engine.connect() as job:
            hold(job, catalog, Y)
            m = place(orders, ("m", {X: 2, Y: 1}, None))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "M waiting for y")
            n = place(orders, ("n", {X: 1}, None))
            await wait_until(lambda: orders.queues.waiting == 1, 30, "N waiting for M")
            assert not n.done()
            job.rollback()
        m_result, n_result = await asyncio.gather(m, n, return_exceptions=True)

    assert isinstance(m_result, tuple)
    assert isinstance(n_result, OrderRejected)
    assert n_result.reason == "insufficient_stock"
    assert (catalog.stock(X), catalog.stock(Y)) == (0, 4)
    assert catalog.order_count() == 1


async def test_an_order_skipped_as_busy_holds_back_only_what_it_needs(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """Ten units of x: M = {x: 2, y: 1} waits for y (held); later orders of x alone are placed meanwhile as long as
    M's two units stay, and the one that would need them waits for M, then gets what M left."""
    catalog.add(X, stock=10)
    catalog.add(Y, stock=5)
    async with order_service(settings) as orders:
        with catalog.engine.connect() as job:
            hold(job, catalog, Y)
            m = place(orders, ("m", {X: 2, Y: 1}, None))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "M waiting for y")
            meanwhile = [await place(orders, (f"n{k}", {X: 2}, None)) for k in range(4)]  # 8 units: all placed
            last = place(orders, ("last", {X: 1}, None))  # would take one of M's two
            await wait_until(lambda: orders.queues.waiting == 1, 30, "the last order waiting for M")
            assert catalog.stock(X) == 2
            job.rollback()
        m_result, last_result = await asyncio.gather(m, last, return_exceptions=True)

    assert all(replayed is False for _, replayed in meanwhile)
    assert isinstance(m_result, tuple)
    assert isinstance(last_result, OrderRejected)
    assert (catalog.stock(X), catalog.stock(Y)) == (0, 4)


async def test_the_first_request_with_a_key_owns_it(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """A = {x, y} with key K waits for y (held). A' (K, another body) arrives later: it waits for A rather than
    take K, and gets 422 once A is placed; A'' (K, A's body) replays A."""
    catalog.add(X, stock=10)
    catalog.add(Y, stock=10)
    async with order_service(settings) as orders:
        with catalog.engine.connect() as job:
            hold(job, catalog, Y)
            a = place(orders, ("alice", {X: 1, Y: 1}, "K"))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "A waiting for y")
            other_body = place(orders, ("alice", {X: 3}, "K"))
            same_body = place(orders, ("alice", {Y: 1, X: 1}, "K"))
            await wait_until(lambda: orders.queues.waiting == 2, 30, "both resends waiting for A")
            assert catalog.order_count() == 0
            job.rollback()
        a_result, other_result, same_result = await asyncio.gather(a, other_body, same_body, return_exceptions=True)

    assert isinstance(a_result, tuple)
    assert a_result[1] is False
    assert isinstance(other_result, IdempotencyKeyReused)
    assert same_result == (a_result[0], True)
    assert (catalog.stock(X), catalog.stock(Y)) == (9, 9)
    assert catalog.order_count() == 1
    assert keys_stored(catalog) == 1


async def test_resends_of_an_order_waiting_for_a_held_product_never_stall_the_sale_of_its_other_product(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """A flash sale on x (two workers, 300 orders at once, each with its key) while a catalog job holds y. A = {x, y}
    with key K waits for y; it is resent meanwhile with the same body (to its worker and to the other) and with
    another body: the resends hold nothing and stall nobody. Every order of x is placed while y is still held."""
    catalog.add(X, stock=10_000)
    catalog.add(Y, stock=100)
    async with order_service(settings) as one, order_service(settings) as two:
        with catalog.engine.connect() as job:
            hold(job, catalog, Y)
            a = place(one, ("alice", {X: 1, Y: 1}, "K"))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "A waiting for y")
            resends = [
                place(one, ("alice", {X: 1, Y: 1}, "K")),
                place(one, ("alice", {X: 2}, "K")),
                place(two, ("alice", {X: 1, Y: 1}, "K")),
            ]
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 2, 30, "the other worker's too")
            sale = [place((one, two)[n % 2], (f"buyer-{n % 40}", {X: 1}, f"sale-{n}")) for n in range(300)]
            sold = await asyncio.gather(*sale, return_exceptions=True)
            assert all(isinstance(result, tuple) and result[1] is False for result in sold), Counter(map(type, sold))
            assert not a.done()
            assert catalog.stock(X) == 10_000 - 300
            job.rollback()
        a_result, *resent = await asyncio.gather(a, *resends, return_exceptions=True)

    assert isinstance(a_result, tuple)
    same_worker, other_body, other_worker = resent
    assert same_worker == (a_result[0], True)
    assert isinstance(other_body, IdempotencyKeyReused)
    assert isinstance(other_worker, tuple)
    assert other_worker[0].id == a_result[0].id
    assert (catalog.stock(X), catalog.stock(Y)) == (10_000 - 301, 99)
    assert catalog.order_count() == 301
    assert keys_stored(catalog) == 301


async def orders_answered(tasks: list[asyncio.Task[Any]]) -> list[tuple[float, Any]]:
    """Each task's answer (or exception) and when it came, in the order of ``tasks``."""

    async def timed(task: asyncio.Task[Any]) -> tuple[float, Any]:
        try:
            result: Any = await task
        except Exception as exc:  # noqa: BLE001 - the answer under test
            result = exc
        return time.monotonic(), result

    return list(await asyncio.gather(*(timed(task) for task in tasks)))


LOCK_TIMEOUT_MS = 1500
MARGIN = 0.5  # the event loop's and the database's own delays on a loaded machine


async def test_orders_past_the_bounds_are_refused_at_once_and_the_queued_ones_answered_by_their_deadline(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """Five orders may wait for a product, eight in the worker. x and y held: beyond five for x, orders of x are
    refused at once (503 product_busy); beyond eight in all, orders of y are (queue_full). The queued ones are
    answered by DB_LOCK_TIMEOUT_MS after their arrival, those taken by a later transaction included: never
    twice that."""
    catalog.add(X, stock=100)
    catalog.add(Y, stock=100)
    bounded = Settings.from_env(
        {
            **settings.as_env(),
            "ORDER_QUEUE_PER_PRODUCT": "5",
            "ORDER_QUEUE_PER_WORKER": "8",
            "DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS),
        }
    )
    async with order_service(bounded) as orders:
        with catalog.engine.connect() as job:
            hold(job, catalog, X)
            hold(job, catalog, Y)
            first_x = place(orders, ("first-x", {X: 1}, None))
            first_y = place(orders, ("first-y", {Y: 1}, None))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 2, 30, "x and y waited for")
            await asyncio.sleep(LOCK_TIMEOUT_MS / 2000)  # the queued orders arrive half-way through that wait
            sent = time.monotonic()
            of_x = [place(orders, (f"x-{n}", {X: 1}, None)) for n in range(8)]
            of_y = [place(orders, (f"y-{n}", {Y: 1}, None)) for n in range(5)]
            refused_at_once = await asyncio.gather(*of_x[5:], *of_y[3:], return_exceptions=True)
            refused_by = time.monotonic()
            assert orders.queues.waiting == 8
            answers = await orders_answered([first_x, first_y, *of_x[:5], *of_y[:3]])
            job.rollback()

    assert refused_by - sent < LOCK_TIMEOUT_MS / 2000  # before any queued order's deadline
    reasons = [getattr(result, "cause", result) for result in refused_at_once]
    assert reasons == ["product_busy"] * 3 + ["queue_full"] * 2
    for answered, result in answers[2:]:
        assert isinstance(result, DatabaseUnavailable)
        assert result.cause in {"lock_timeout", "product_busy"}
        assert answered - sent <= LOCK_TIMEOUT_MS / 1000 + MARGIN
    assert orders.queues.waiting == 0
    assert catalog.order_count() == 0
    assert (catalog.stock(X), catalog.stock(Y)) == (100, 100)


async def test_orders_that_give_up_or_leave_while_queued_leave_nothing_counted(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """Orders queued behind a held row: two are cancelled (their clients left), a twin waits for its owner, the rest
    give up at their deadline. Afterwards nothing waits, by the service's count and by the gauge."""
    catalog.add(HOT, stock=100)
    short = Settings.from_env({**settings.as_env(), "DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS)})
    gauge_before = waiting_gauge()
    async with order_service(short) as orders:
        with catalog.engine.connect() as job:
            hold(job, catalog, HOT)
            first = place(orders, ("first", {HOT: 1}, "k-first"))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "the first order waiting")
            queued = [place(orders, (f"q-{n}", {HOT: 1}, None)) for n in range(5)]
            twin = place(orders, ("first", {HOT: 1}, "k-first"))
            await wait_until(lambda: orders.queues.waiting == 6, 30, "six waiting")
            assert waiting_gauge() - gauge_before == 6
            for task in queued[:2]:
                task.cancel()
            await asyncio.gather(*queued[:2], return_exceptions=True)
            assert orders.queues.waiting == 4
            assert waiting_gauge() - gauge_before == 4
            results = await asyncio.gather(first, twin, *queued[2:], return_exceptions=True)
            job.rollback()
        assert all(isinstance(result, DatabaseUnavailable) for result in results), results
        assert orders.queues.waiting == 0
    assert waiting_gauge() == gauge_before
    assert catalog.order_count() == 0


async def test_a_lone_order_answers_with_its_items_in_product_order_everywhere(
    settings: Settings, catalog: Catalog
) -> None:
    """The 200, its replay, the order read back and the page list the items by product id, whatever the lines'
    order."""
    for product_id in (3, 1, 2):
        catalog.add(product_id, price_cents=product_id * 100, stock=10)
    async with order_service(settings) as orders:
        placed, _ = await place(orders, ("ivy", {3: 1, 1: 2, 2: 3}, "ivy-1"))
        replayed, was_replayed = await place(orders, ("ivy", {2: 3, 3: 1, 1: 2}, "ivy-1"))
        read = await orders.get_order("ivy", placed.id)
        (listed,), _ = await orders.list_orders("ivy", 10, None)
    assert was_replayed
    answers: list[OrderRead] = [placed, replayed, read, listed]
    for answer in answers:
        assert [(item.product_id, item.qty) for item in answer.items] == [(1, 2), (2, 3), (3, 1)]
    assert placed == replayed == read == listed


async def test_twins_in_two_workers_waiting_for_one_row_place_one_order(
    settings: Settings, database: ProvisionedDatabase, catalog: Catalog
) -> None:
    """The same order with one key reaches two workers while x is held: both wait for x's row. The first to get it
    places the order; the other's statement began before that commit, so it writes the key again, which fails on
    the key's primary key: its transaction runs again, sees the key and replays the order."""
    catalog.add(X, stock=10)
    races_before = REGISTRY.get_sample_value("db_transaction_retries_total", {"cause": "idempotency_key_race"}) or 0
    async with order_service(settings) as one, order_service(settings) as two:
        with catalog.engine.connect() as job:
            hold(job, catalog, X)
            first = place(one, ("alice", {X: 2}, "K"))
            second = place(two, ("alice", {X: 2}, "K"))
            await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 2, 30, "both waiting for x")
            job.rollback()
        answers = await asyncio.gather(first, second)

    assert answers[0][0] == answers[1][0]
    assert sorted(replayed for _, replayed in answers) == [False, True]
    races = REGISTRY.get_sample_value("db_transaction_retries_total", {"cause": "idempotency_key_race"}) or 0
    assert races - races_before == 1
    assert catalog.stock(X) == 8
    assert catalog.order_count() == 1
    assert keys_stored(catalog) == 1
