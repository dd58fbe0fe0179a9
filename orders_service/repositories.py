"""Advanced-Alchemy repositories. Hot paths use SQLAlchemy Core: one statement per step, no ORM unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import (
    DateTime,
    Integer,
    Table,
    any_,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.sql import Select

from orders_service.models import IdempotencyKey, Order, OrderItem, Product
from orders_service.schemas import OrderItemRead, OrderRead
from orders_service.statements import fetch_all

_orders = cast("Table", Order.__table__)
_items = cast("Table", OrderItem.__table__)
_keys = cast("Table", IdempotencyKey.__table__)
_products = cast("Table", Product.__table__)

_ORDER_COLUMNS = (
    _orders.c.id,
    _orders.c.user_id,
    _orders.c.created_at,
    _orders.c.total_cents,
    _orders.c.status,
    _orders.c.cancelled_at,
)


@dataclass(frozen=True, slots=True)
class LockedProduct:
    id: int
    price_cents: int
    stock: int


@dataclass(frozen=True, slots=True)
class ReservedLine:
    product_id: int
    qty: int
    price_cents: int


@dataclass(frozen=True, slots=True)
class StoredKey:
    request_hash: str
    order_id: int | None


_lock_products = (
    select(_products.c.id, _products.c.price_cents, _products.c.stock)
    .where(_products.c.id == any_(bindparam("ids", type_=ARRAY(Integer))))
    .order_by(_products.c.id)
    .with_for_update()
)


def _build_place_order() -> Select[tuple[int, datetime, int]]:
    """One statement that reserves stock, inserts the order and its items, and ties the idempotency key to it.

    Data-modifying CTEs all run, in one snapshot, whether or not the final SELECT reads them.
    The products' rows are already locked by ``lock_products``, so the guarded UPDATE cannot
    fail here unless the catalog's rows changed under a lock we hold (it reports how many rows
    it reserved so the caller can verify). With no idempotency key the key UPDATE matches nothing.
    """
    lines = (
        func.unnest(
            bindparam("product_ids", type_=ARRAY(Integer)),
            bindparam("qtys", type_=ARRAY(Integer)),
            bindparam("prices", type_=ARRAY(Integer)),
        )
        .table_valued("product_id", "qty", "price_cents", name="line")
        .render_derived()
    )
    reserved = (
        update(_products)
        .where(_products.c.id == lines.c.product_id, _products.c.stock >= lines.c.qty)
        .values(stock=_products.c.stock - lines.c.qty)
        .returning(_products.c.id)
        .cte("reserved")
    )
    new_order = (
        insert(_orders)
        .values(user_id=bindparam("owner"), total_cents=bindparam("total_cents", type_=BIGINT))
        .returning(_orders.c.id, _orders.c.created_at)
        .cte("new_order")
    )
    new_items = (
        insert(_items)
        .from_select(
            ["order_id", "product_id", "qty", "price_cents"],
            # new_order is a single row, joined to every line
            select(new_order.c.id, lines.c.product_id, lines.c.qty, lines.c.price_cents).select_from(
                new_order.join(lines, true())
            ),
        )
        .cte("new_items")
    )
    key_to_order = (
        update(_keys)
        .where(_keys.c.user_id == bindparam("owner"), _keys.c.key == bindparam("idempotency_key"))
        .values(order_id=select(new_order.c.id).scalar_subquery())
        .cte("key_to_order")
    )
    reserved_count = select(func.count()).select_from(reserved).scalar_subquery()
    return (
        select(new_order.c.id, new_order.c.created_at, reserved_count.label("reserved"))
        .add_cte(new_items)
        .add_cte(key_to_order)
    )


def _build_cancel_order() -> Select[tuple[datetime]]:
    """One statement that puts an order's units back in stock and marks it cancelled."""
    restocked = (
        update(_products)
        .where(_products.c.id == _items.c.product_id, _items.c.order_id == bindparam("order_id"))
        .values(stock=_products.c.stock + _items.c.qty)
        .returning(_products.c.id)
        .cte("restocked")
    )
    cancelled = (
        update(_orders)
        .where(_orders.c.id == bindparam("order_id"))
        .values(status="cancelled", cancelled_at=func.now())
        .returning(_orders.c.cancelled_at)
        .cte("cancelled")
    )
    return select(cancelled.c.cancelled_at).add_cte(restocked)


_place_order = _build_place_order()
_cancel_order = _build_cancel_order()

_lock_order = (
    select(_orders.c.status)
    .where(_orders.c.id == bindparam("order_id"), _orders.c.user_id == bindparam("user_id"))
    .with_for_update()
)

_lock_products_of_order = (
    select(_products.c.id)
    .where(_products.c.id.in_(select(_items.c.product_id).where(_items.c.order_id == bindparam("order_id"))))
    .order_by(_products.c.id)
    .with_for_update()
)

_claim_key = (
    pg_insert(_keys)
    .values(user_id=bindparam("user_id"), key=bindparam("key"), request_hash=bindparam("request_hash"))
    .on_conflict_do_nothing(index_elements=[_keys.c.user_id, _keys.c.key])
    .returning(literal(True))
)

_stored_key = select(_keys.c.request_hash, _keys.c.order_id).where(
    _keys.c.user_id == bindparam("user_id"), _keys.c.key == bindparam("key")
)


_get_order = select(*_ORDER_COLUMNS).where(
    _orders.c.id == bindparam("order_id", type_=BIGINT), _orders.c.user_id == bindparam("user_id")
)
_first_page = (
    select(*_ORDER_COLUMNS)
    .where(_orders.c.user_id == bindparam("user_id"))
    .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
    .limit(bindparam("limit", type_=Integer))
)
_next_page = _first_page.where(
    tuple_(_orders.c.created_at, _orders.c.id)
    < tuple_(bindparam("after_created_at", type_=DateTime(timezone=True)), bindparam("after_id", type_=BIGINT))
)
_items_of_orders = (
    select(_items.c.order_id, _items.c.product_id, _items.c.qty, _items.c.price_cents)
    .where(_items.c.order_id == any_(bindparam("order_ids", type_=ARRAY(BIGINT))))
    .order_by(_items.c.order_id, _items.c.id)
)


class ProductRepository(SQLAlchemyAsyncRepository[Product]):
    """The catalog's products: locked, decremented and restocked, never created."""

    model_type = Product

    async def lock_products(self, product_ids: Sequence[int]) -> dict[int, LockedProduct]:
        """Lock the rows of ``product_ids`` in ascending id order and read price and stock under the lock.

        Every transaction that touches several products locks them in the same (id) order,
        so two orders over the same products wait for each other instead of deadlocking.
        """
        rows = await fetch_all(self.session, _lock_products, {"ids": list(product_ids)})
        return {row.id: LockedProduct(row.id, row.price_cents, row.stock) for row in rows}

    async def lock_products_of_order(self, order_id: int) -> None:
        """Lock the order's products in ascending id order: the same order as ``lock_products``."""
        await fetch_all(self.session, _lock_products_of_order, {"order_id": order_id})


class IdempotencyKeyRepository(SQLAlchemyAsyncRepository[IdempotencyKey]):
    model_type = IdempotencyKey

    async def claim_key(self, user_id: str, key: str, request_hash: str) -> StoredKey | None:
        """Insert the key in this transaction, or return the one another request stored first.

        A concurrent request holding the same key makes the INSERT wait until it commits
        (then the key is returned) or rolls back (then this request claims it). The lookup
        is a separate statement so that it sees the row committed while the INSERT waited.
        """
        params = {"user_id": user_id, "key": key, "request_hash": request_hash}
        while True:
            if await fetch_all(self.session, _claim_key, params):
                return None
            if rows := await fetch_all(self.session, _stored_key, params):
                return StoredKey(rows[0].request_hash, rows[0].order_id)
            # The key was purged between the two statements: claim it again.

    async def delete_older_than(self, cutoff: datetime) -> int:
        """Delete keys created before ``cutoff``; orders are untouched. Returns how many were deleted."""
        result = await self.session.execute(delete(_keys).where(_keys.c.created_at < cutoff))
        return cast("int", result.rowcount)  # type: ignore[attr-defined]


class OrderRepository(SQLAlchemyAsyncRepository[Order]):
    model_type = Order

    async def insert_order_reserving_stock(
        self, user_id: str, lines: Sequence[ReservedLine], total_cents: int, idempotency_key: str | None
    ) -> tuple[int, datetime, int]:
        """Decrement stock for ``lines``, insert the order with its items and link the key, in one round trip.

        Returns the new order's id, its ``created_at`` and how many product rows were reserved.
        """
        params = {
            "product_ids": [line.product_id for line in lines],
            "qtys": [line.qty for line in lines],
            "prices": [line.price_cents for line in lines],
            "owner": user_id,  # not "user_id": an UPDATE would add parameters named like columns to its SET
            "total_cents": total_cents,
            "idempotency_key": idempotency_key,
        }
        (row,) = await fetch_all(self.session, _place_order, params)
        return row.id, row.created_at, row.reserved

    async def lock_order(self, user_id: str, order_id: int) -> str | None:
        """Lock the user's order row and return its status (None when the user has no such order)."""
        rows = await fetch_all(self.session, _lock_order, {"order_id": order_id, "user_id": user_id})
        return str(rows[0].status) if rows else None

    async def cancel_order_restocking(self, order_id: int) -> datetime:
        """Put the order's units back in stock and mark it cancelled; its products must be locked."""
        (row,) = await fetch_all(self.session, _cancel_order, {"order_id": order_id})
        return cast("datetime", row.cancelled_at)

    async def get_for_user(self, user_id: str, order_id: int) -> OrderRead | None:
        """The user's order with its items, or None (whether it is missing or someone else's)."""
        orders = await fetch_all(self.session, _get_order, {"order_id": order_id, "user_id": user_id})
        return (await self._with_items(orders))[0] if orders else None

    async def list_for_user(
        self, user_id: str, limit: int, before: tuple[datetime, int] | None = None
    ) -> list[OrderRead]:
        """Up to ``limit`` of the user's orders, newest first, older than ``before`` (keyset pagination).

        Two queries whatever the page size; the first reads ``ix_orders_user_id_created_at_id`` in order.
        """
        if before is None:
            orders = await fetch_all(self.session, _first_page, {"user_id": user_id, "limit": limit})
        else:
            params = {"user_id": user_id, "limit": limit, "after_created_at": before[0], "after_id": before[1]}
            orders = await fetch_all(self.session, _next_page, params)
        return await self._with_items(orders)

    async def _with_items(self, orders: Sequence[Any]) -> list[OrderRead]:
        if not orders:
            return []
        items_by_order: dict[int, list[OrderItemRead]] = {}
        for item in await fetch_all(self.session, _items_of_orders, {"order_ids": [order.id for order in orders]}):
            items_by_order.setdefault(item.order_id, []).append(
                OrderItemRead(item.product_id, item.qty, item.price_cents)
            )
        return [
            OrderRead(
                id=order.id,
                user_id=order.user_id,
                created_at=order.created_at,
                total_cents=order.total_cents,
                status=order.status,
                cancelled_at=order.cancelled_at,
                items=items_by_order.get(order.id, []),
            )
            for order in orders
        ]
