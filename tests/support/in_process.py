"""The order service in-process (``WorkerComponents``, one per simulated worker) against the real database, and the
catalog job that holds a product's row so that orders queue in a known order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import Connection, text

from orders_service.config import Settings
from orders_service.lifecycle.worker_components import WorkerComponents
from orders_service.orders.schemas import OrderLine, OrderRead
from orders_service.orders.service import OrderService
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase, backends_waiting_for_a_lock
from tests.support.faults import wait_until

HOT = 1
Order = tuple[str, dict[int, int], str | None]  # user, product id -> qty, Idempotency-Key


@asynccontextmanager
async def order_service(settings: Settings) -> AsyncIterator[OrderService]:
    """The service of one worker; once the test is done with it, every order it took must have been answered and
    forgotten (nothing left queued, held or registered)."""
    components = WorkerComponents.create(settings)
    try:
        yield components.orders
        assert components.queues.idle, "the product queues kept state after every order was answered"
    finally:
        await components.close()


def hold(connection: Connection, catalog: Catalog, product_id: int) -> None:
    """Lock a product's row, as a catalog job would, until ``connection`` rolls back."""
    connection.execute(text(f"SELECT 1 FROM {catalog.catalog_schema}.products WHERE id = {product_id} FOR UPDATE"))


def place(orders: OrderService, order: Order) -> asyncio.Task[tuple[OrderRead, bool]]:
    user, lines, key = order
    wanted = [OrderLine(product_id, qty) for product_id, qty in lines.items()]
    return asyncio.create_task(orders.place_order(user, wanted, key))


async def place_behind_a_held_row(
    orders: OrderService, database: ProvisionedDatabase, catalog: Catalog, first: Order, queued: Sequence[Order]
) -> list[Any]:
    """``first`` waits on the hot product's row (held), ``queued`` queue behind it in this order; then the row
    is released. The answers (or exceptions), first's first."""
    with catalog.engine.connect() as catalog_job:
        hold(catalog_job, catalog, HOT)
        first_task = place(orders, first)
        await wait_until(lambda: len(backends_waiting_for_a_lock(database)) == 1, 30, "the first order waiting")
        tasks = []
        for order in queued:  # one at a time: the arrival order is the order of this list
            tasks.append(place(orders, order))
            count = len(tasks)
            await wait_until(lambda: orders.queues.waiting == count, 30, "the order queued")  # noqa: B023
        catalog_job.rollback()
    return await asyncio.gather(first_task, *tasks, return_exceptions=True)


def transactions_of(catalog: Catalog, users: Sequence[str]) -> list[str | None]:
    """The transaction id (xmin) that inserted each user's order; None for a user without one."""
    with catalog.engine.connect() as connection:
        rows: dict[str, str] = dict(
            connection.execute(
                text(f"SELECT user_id, xmin::text FROM {catalog.orders_schema}.orders WHERE user_id = ANY(:users)"),
                {"users": list(users)},
            ).all()
        )
    return [rows.get(user) for user in users]
