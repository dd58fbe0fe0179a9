"""Placing, reading and cancelling orders: the one place where each request's transaction begins and ends."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable, Iterable

import msgspec
from litestar.exceptions import NotFoundException
from psycopg import errors as pg_errors
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from orders_service import metrics
from orders_service.cursor import decode_cursor, encode_cursor
from orders_service.errors import IdempotencyKeyReused, OrderRejected, RestockOverflow
from orders_service.repositories import (
    IdempotencyKeyRepository,
    LockedProduct,
    OrderRepository,
    ProductRepository,
    ReservedLine,
)
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


def request_fingerprint(wanted: dict[int, int]) -> str:
    """What an idempotent retry must repeat: the combined lines (line order and splitting don't matter)."""
    return hashlib.sha256(msgspec.json.encode(sorted(wanted.items()))).hexdigest()


def _ids(product_ids: Iterable[int]) -> str:
    return ", ".join(map(str, product_ids))


class OrderService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.orders = OrderRepository(session=session)
        self.products = ProductRepository(session=session)
        self.keys = IdempotencyKeyRepository(session=session)

    async def place_order(
        self, user_id: str, lines: Iterable[OrderLine], idempotency_key: str | None = None
    ) -> tuple[OrderRead, bool]:
        """Reserve stock for every line and record the order, all or nothing.

        Returns the order and whether it is the replay of an earlier request with the same
        ``idempotency_key`` (then nothing new was reserved or written). A rejected order rolls
        back, key included, so the same key may be retried.
        """
        wanted = combine_lines(lines)
        try:
            result = await self._in_transaction(lambda: self._place_order_once(user_id, wanted, idempotency_key))
        except OrderRejected as rejected:
            metrics.ORDER_CREATE_FAILURES.labels(reason=rejected.reason).inc()
            raise
        order, replayed = result
        if not replayed:
            metrics.ORDERS_CREATED.inc()
        return order, replayed

    async def _place_order_once(
        self, user_id: str, wanted: dict[int, int], idempotency_key: str | None
    ) -> tuple[OrderRead, bool]:
        if idempotency_key is not None:
            fingerprint = request_fingerprint(wanted)
            stored = await self.keys.claim_key(user_id, idempotency_key, fingerprint)
            if stored is not None:
                return await self._replay(user_id, stored.request_hash, stored.order_id, fingerprint), True
        locked = await self.products.lock_products(list(wanted))
        reserved = check_reservable(wanted, locked)
        total_cents = sum(line.qty * line.price_cents for line in reserved)
        if total_cents > PG_BIGINT_MAX:
            raise OrderRejected("total_too_large", list(wanted), "the order total exceeds the largest storable amount")
        order_id, created_at, reserved_rows = await self.orders.insert_order_reserving_stock(
            user_id, reserved, total_cents, idempotency_key
        )
        if reserved_rows != len(reserved):  # pragma: no cover - the rows are locked; kept as a tripwire
            raise RuntimeError(f"reserved {reserved_rows} of {len(reserved)} products under lock")
        # Explicit commit: a failed COMMIT must surface as an error, never as a 2xx for a lost order.
        await self.session.commit()
        items = [OrderItemRead(line.product_id, line.qty, line.price_cents) for line in reserved]
        order = OrderRead(order_id, user_id, created_at, total_cents, "placed", None, items)
        return order, False

    async def _replay(self, user_id: str, stored_hash: str, order_id: int | None, fingerprint: str) -> OrderRead:
        await self.session.rollback()
        if stored_hash != fingerprint:
            raise IdempotencyKeyReused
        order = None if order_id is None else await self.orders.get_for_user(user_id, order_id)
        if order is None:  # pragma: no cover - keys are written with their order; an order delete cascades
            raise RuntimeError("idempotency key without its order")
        return order

    async def get_order(self, user_id: str, order_id: int) -> OrderRead:
        """The user's order; 404 whether it is missing or someone else's."""
        order = await self.orders.get_for_user(user_id, order_id)
        if order is None:
            raise NotFoundException(f"order {order_id} not found")
        return order

    async def cancel_order(self, user_id: str, order_id: int) -> OrderRead:
        """Cancel a placed order and put its units back in stock; cancelling again changes nothing.

        Lock order: the order's row, then its products in ascending id order, as reservations
        do, so cancellations and new orders for the same products never deadlock.
        """

        async def cancel_once() -> None:
            status = await self.orders.lock_order(user_id, order_id)
            if status is None:
                raise NotFoundException(f"order {order_id} not found")
            if status == "placed":
                await self.products.lock_products_of_order(order_id)
                try:
                    await self.orders.cancel_order_restocking(order_id)
                except DBAPIError as exc:
                    if isinstance(exc.orig, pg_errors.NumericValueOutOfRange):
                        raise RestockOverflow from None
                    raise
                await self.session.commit()
                metrics.ORDERS_CANCELLED.inc()

        await self._in_transaction(cancel_once)
        return await self.get_order(user_id, order_id)

    async def list_orders(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[OrderRead], str | None]:
        """One page of the user's orders, newest first, and the cursor of the next page (None on the last)."""
        before = decode_cursor(cursor) if cursor is not None else None
        orders = await self.orders.list_for_user(user_id, limit + 1, before)
        if len(orders) <= limit:
            return orders, None
        last = orders[limit - 1]
        return orders[:limit], encode_cursor(last.created_at, last.id)

    async def _in_transaction[T](self, work: Callable[[], Awaitable[T]]) -> T:
        """Run ``work`` (which commits) and roll back on any error, retrying deadlocks and serialization failures.

        Our lock order rules out deadlocks among our own transactions, but other writers of
        ``catalog.products`` may not follow it.
        """
        for attempt in range(1, MAX_ATTEMPTS + 1):
            try:
                return await work()
            except DBAPIError as exc:
                await self.session.rollback()
                if attempt == MAX_ATTEMPTS or not isinstance(exc.orig, _RETRYABLE):
                    raise
                logger.warning("retrying transaction (attempt %d): %s", attempt, exc.orig)
            except Exception:
                await self.session.rollback()
                raise
        raise AssertionError("unreachable")  # pragma: no cover
