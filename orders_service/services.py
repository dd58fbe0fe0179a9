"""Placing and listing orders: the one place where an order's transaction begins and ends."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from orders_service import metrics
from orders_service.errors import OrderRejected
from orders_service.repositories import LockedProduct, OrderRepository, ProductRepository, ReservedLine
from orders_service.schemas import OrderItemRead, OrderLine, OrderRead

logger = logging.getLogger(__name__)

PG_BIGINT_MAX = 2**63 - 1
MAX_ATTEMPTS = 3
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)


def combine_lines(lines: Iterable[OrderLine]) -> dict[int, int]:
    """Quantities per product id, duplicate lines summed, in ascending product id order."""
    combined: dict[int, int] = {}
    for line in lines:
        combined[line.product_id] = combined.get(line.product_id, 0) + line.qty
    return dict(sorted(combined.items()))


def check_reservable(wanted: dict[int, int], locked: dict[int, LockedProduct]) -> list[ReservedLine]:
    """The lines to reserve, priced under the lock; raise OrderRejected if any line cannot be served."""
    missing = [product_id for product_id in wanted if product_id not in locked]
    if missing:
        raise OrderRejected("missing_product", missing, f"unknown product id(s): {_ids(missing)}")
    short = [product_id for product_id, qty in wanted.items() if locked[product_id].stock < qty]
    if short:
        raise OrderRejected("insufficient_stock", short, f"insufficient stock for product id(s): {_ids(short)}")
    return [ReservedLine(product_id, qty, locked[product_id].price_cents) for product_id, qty in wanted.items()]


def _ids(product_ids: Iterable[int]) -> str:
    return ", ".join(map(str, product_ids))


class OrderService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.orders = OrderRepository(session=session)
        self.products = ProductRepository(session=session)

    async def place_order(self, user_id: str, lines: Iterable[OrderLine]) -> OrderRead:
        """Reserve stock for every line and record the order, all or nothing.

        The transaction is retried (a bounded number of times) when PostgreSQL aborts it for a
        deadlock or a serialization failure; our own lock order rules out deadlocks between
        orders, but other writers of ``catalog.products`` may not follow it.
        """
        wanted = combine_lines(lines)
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                order = await self._place_order_once(user_id, wanted)
            except OrderRejected as rejected:
                await self.session.rollback()
                metrics.ORDER_CREATE_FAILURES.labels(reason=rejected.reason).inc()
                raise
            except DBAPIError as exc:
                await self.session.rollback()
                if attempt == MAX_ATTEMPTS or not isinstance(exc.orig, _RETRYABLE):
                    raise
                logger.warning("retrying order transaction (attempt %d): %s", attempt, exc.orig)
                continue
            metrics.ORDERS_CREATED.inc()
            return order
        raise AssertionError("unreachable")  # pragma: no cover

    async def _place_order_once(self, user_id: str, wanted: dict[int, int]) -> OrderRead:
        locked = await self.products.lock_products(list(wanted))
        reserved = check_reservable(wanted, locked)
        total_cents = sum(line.qty * line.price_cents for line in reserved)
        if total_cents > PG_BIGINT_MAX:
            raise OrderRejected("total_too_large", list(wanted), "the order total exceeds the largest storable amount")
        order_id, created_at, reserved_rows = await self.orders.insert_order_reserving_stock(
            user_id, reserved, total_cents
        )
        if reserved_rows != len(reserved):  # pragma: no cover - the rows are locked; kept as a tripwire
            raise RuntimeError(f"reserved {reserved_rows} of {len(reserved)} products under lock")
        # Explicit commit: a failed COMMIT must surface as an error, never as a 2xx for a lost order.
        await self.session.commit()
        return _order_read(order_id, user_id, created_at, total_cents, reserved)

    async def list_orders(self, user_id: str) -> list[OrderRead]:
        """The user's orders, newest first."""
        return await self.orders.list_for_user(user_id)


def _order_read(
    order_id: int, user_id: str, created_at: datetime, total_cents: int, lines: list[ReservedLine]
) -> OrderRead:
    items = [OrderItemRead(line.product_id, line.qty, line.price_cents) for line in lines]
    return OrderRead(id=order_id, user_id=user_id, created_at=created_at, total_cents=total_cents, items=items)
