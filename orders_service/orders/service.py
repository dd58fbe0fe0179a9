"""Placing, reading and cancelling orders: the business rules around the repository's statements."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable

import msgspec

from orders_service.db.transactions import StatementFailed
from orders_service.observability import metrics
from orders_service.orders.cursor import decode_cursor, encode_cursor
from orders_service.orders.errors import IdempotencyKeyReused, OrderNotFound, OrderRejected, RestockOverflow
from orders_service.orders.product_queues import ProductQueues
from orders_service.orders.schemas import PG_INT_MAX, OrderLine, OrderRead
from orders_service.orders.store import OrderRequest, Placement

NUMERIC_VALUE_OUT_OF_RANGE = "22003"


def combine_lines(lines: Iterable[OrderLine]) -> dict[int, int]:
    """Quantities per product id, duplicate lines summed, in ascending product id order.

    Raises OrderRejected (``quantity_too_large``) when a sum exceeds the integer column of
    ``order_items.qty`` (and of the stock): each line is bounded, their sum is not.
    """
    combined: dict[int, int] = {}
    for line in lines:
        combined[line.product_id] = combined.get(line.product_id, 0) + line.qty
    too_large = [product_id for product_id, qty in combined.items() if qty > PG_INT_MAX]
    if too_large:
        detail = f"the combined quantity of product id(s) {_ids(too_large)} exceeds {PG_INT_MAX}"
        raise OrderRejected("quantity_too_large", too_large, detail)
    return dict(sorted(combined.items()))


def request_fingerprint(wanted: dict[int, int]) -> str:
    """What an idempotent retry must repeat: the combined lines (line order and splitting don't matter)."""
    return hashlib.sha256(msgspec.json.encode(sorted(wanted.items()))).hexdigest()


def rejection(outcome: Placement, wanted: dict[int, int]) -> OrderRejected:
    """Why the order was not placed: unknown products win over missing stock, then the total."""
    if outcome.missing:
        return OrderRejected("missing_product", outcome.missing, f"unknown product id(s): {_ids(outcome.missing)}")
    if outcome.short:
        detail = f"insufficient stock for product id(s): {_ids(outcome.short)}"
        return OrderRejected("insufficient_stock", outcome.short, detail)
    return OrderRejected("total_too_large", list(wanted), "the order total exceeds the largest storable amount")


def _ids(product_ids: Iterable[int]) -> str:
    return ", ".join(map(str, sorted(product_ids)))


class OrderService:
    def __init__(self, queues: ProductQueues, *, on_event_committed: Callable[[], None] = lambda: None) -> None:
        """``on_event_committed``: called after each commit that wrote an event to the outbox (it wakes the relay)."""
        self.queues = queues
        self.orders = queues.store
        self._on_event_committed = on_event_committed

    async def place_order(
        self, user_id: str, lines: Iterable[OrderLine], idempotency_key: str | None = None
    ) -> tuple[OrderRead, bool]:
        """Reserve stock for every line and record the order, all or nothing (``ProductQueues``).

        Returns the order and whether it is the replay of an earlier request with the same
        ``idempotency_key`` (then nothing new was reserved or written). A rejected order writes
        nothing, its key included, so the same key may be retried.
        """
        try:
            wanted = combine_lines(lines)
        except OrderRejected as refused:
            metrics.ORDER_CREATE_FAILURES.labels(reason=refused.reason).inc()
            raise
        fingerprint = request_fingerprint(wanted) if idempotency_key is not None else None
        request = OrderRequest(user_id, wanted, idempotency_key, fingerprint)
        outcome = await self.queues.place(request, self.orders.runner.deadline())
        if outcome.state == "placed" and outcome.order is not None:
            metrics.ORDERS_CREATED.inc()
            self._on_event_committed()
            return outcome.order, False
        if outcome.state == "stored" and outcome.replay_of is not None:
            if outcome.stored_hash != fingerprint:
                raise IdempotencyKeyReused
            return outcome.order or await self.get_order(user_id, outcome.replay_of), True
        rejected = rejection(outcome, wanted)
        metrics.ORDER_CREATE_FAILURES.labels(reason=rejected.reason).inc()
        raise rejected

    async def get_order(self, user_id: str, order_id: int) -> OrderRead:
        """The user's order; 404 whether it is missing or someone else's."""
        order = await self.orders.get_for_user(user_id, order_id)
        if order is None:
            raise OrderNotFound(order_id)
        return order

    async def cancel_order(self, user_id: str, order_id: int) -> OrderRead:
        """Cancel a placed order and put its units back in stock; cancelling again changes nothing."""
        try:
            outcome = await self.queues.cancel(user_id, order_id, self.orders.runner.deadline())
        except StatementFailed as failed:
            if failed.sqlstate == NUMERIC_VALUE_OUT_OF_RANGE:
                raise RestockOverflow from None
            raise
        if outcome is None or outcome.order is None:
            raise OrderNotFound(order_id)
        if outcome.cancelled_now:
            metrics.ORDERS_CANCELLED.inc()
            self._on_event_committed()
        return outcome.order

    async def list_orders(self, user_id: str, limit: int, cursor: str | None) -> tuple[list[OrderRead], str | None]:
        """One page of the user's orders, newest first, and the cursor of the next page (None on the last)."""
        before = decode_cursor(cursor) if cursor is not None else None
        orders = await self.orders.list_for_user(user_id, limit + 1, before)
        if len(orders) <= limit:
            return orders, None
        last = orders[limit - 1]
        return orders[:limit], encode_cursor(last.created_at, last.id)
