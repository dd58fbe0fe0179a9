"""Advanced-Alchemy repositories. Hot paths use SQLAlchemy Core: one statement per step, no ORM unit of work."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Integer, Table, any_, bindparam, func, insert, select, true, update
from sqlalchemy.dialects.postgresql import ARRAY, BIGINT
from sqlalchemy.sql import Select

from orders_service.models import Order, OrderItem, Product
from orders_service.schemas import OrderItemRead, OrderRead

_orders = cast("Table", Order.__table__)
_items = cast("Table", OrderItem.__table__)
_products = cast("Table", Product.__table__)


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


_lock_products = (
    select(_products.c.id, _products.c.price_cents, _products.c.stock)
    .where(_products.c.id == any_(bindparam("ids", type_=ARRAY(Integer))))
    .order_by(_products.c.id)
    .with_for_update()
)


def _build_place_order() -> Select[tuple[int, datetime, int]]:
    """One statement that reserves stock, inserts the order and inserts its items.

    Data-modifying CTEs all run, in one snapshot, whether or not the final SELECT reads them.
    The products' rows are already locked by ``lock_products``, so the guarded UPDATE cannot
    fail here unless the catalog's rows changed under a lock we hold (it reports how many rows
    it reserved so the caller can verify).
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
        .values(
            user_id=bindparam("user_id"),
            total_cents=bindparam("total_cents", type_=BIGINT),
        )
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
    reserved_count = select(func.count()).select_from(reserved).scalar_subquery()
    return select(new_order.c.id, new_order.c.created_at, reserved_count.label("reserved")).add_cte(new_items)


_place_order = _build_place_order()


class ProductRepository(SQLAlchemyAsyncRepository[Product]):
    """The catalog's products: locked and decremented, never created."""

    model_type = Product

    async def lock_products(self, product_ids: Sequence[int]) -> dict[int, LockedProduct]:
        """Lock the rows of ``product_ids`` in ascending id order and read price and stock under the lock.

        Every transaction that touches several products locks them in the same (id) order,
        so two orders over the same products wait for each other instead of deadlocking.
        """
        result = await self.session.execute(_lock_products, {"ids": list(product_ids)})
        return {row.id: LockedProduct(row.id, row.price_cents, row.stock) for row in result}


class OrderRepository(SQLAlchemyAsyncRepository[Order]):
    model_type = Order

    async def insert_order_reserving_stock(
        self, user_id: str, lines: Sequence[ReservedLine], total_cents: int
    ) -> tuple[int, datetime, int]:
        """Decrement stock for ``lines`` and insert the order with its items, in one round trip.

        Returns the new order's id, its ``created_at`` and how many product rows were reserved.
        """
        params = {
            "product_ids": [line.product_id for line in lines],
            "qtys": [line.qty for line in lines],
            "prices": [line.price_cents for line in lines],
            "user_id": user_id,
            "total_cents": total_cents,
        }
        row = (await self.session.execute(_place_order, params)).one()
        return row.id, row.created_at, row.reserved

    async def list_for_user(self, user_id: str, limit: int | None = None) -> list[OrderRead]:
        """The user's orders, newest first, with their items (two queries, never one per order)."""
        query = (
            select(
                _orders.c.id,
                _orders.c.user_id,
                _orders.c.created_at,
                _orders.c.total_cents,
            )
            .where(_orders.c.user_id == user_id)
            .order_by(_orders.c.created_at.desc(), _orders.c.id.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        orders = (await self.session.execute(query)).all()
        if not orders:
            return []
        items_by_order = await self._items_by_order([order.id for order in orders])
        return [
            OrderRead(
                id=order.id,
                user_id=order.user_id,
                created_at=order.created_at,
                total_cents=order.total_cents,
                items=items_by_order.get(order.id, []),
            )
            for order in orders
        ]

    async def _items_by_order(self, order_ids: list[int]) -> dict[int, list[OrderItemRead]]:
        query = (
            select(
                _items.c.order_id,
                _items.c.product_id,
                _items.c.qty,
                _items.c.price_cents,
            )
            .where(_items.c.order_id == any_(bindparam("order_ids", type_=ARRAY(BIGINT))))
            .order_by(_items.c.order_id, _items.c.id)
        )
        grouped: dict[int, list[OrderItemRead]] = {}
        for row in await self.session.execute(query, {"order_ids": order_ids}):
            grouped.setdefault(row.order_id, []).append(OrderItemRead(row.product_id, row.qty, row.price_cents))
        return grouped
