"""An order's row as the API shows it: the columns to select, its items as one JSON array, and its decoding.

Shared by the order store's statements and the events relay, which builds each event from the
order's rows at publish time.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from typing import Any, cast

import msgspec
from sqlalchemy import Table, Text, func, literal_column, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import aggregate_order_by

from orders_service.db.models import Order, OrderItem
from orders_service.orders.schemas import OrderItemRead, OrderRead

_orders = cast("Table", Order.__table__)
_items = cast("Table", OrderItem.__table__)

ORDER_COLUMNS = (
    _orders.c.id,
    _orders.c.user_id,
    _orders.c.created_at,
    _orders.c.total_cents,
    _orders.c.status,
    _orders.c.cancelled_at,
)


def items_json(order_id: Any) -> Any:
    """An order's items as one JSON array by product id (as every answer lists them), which msgspec decodes into
    OrderItemRead in C.

    Cheaper than rows or integer arrays through psycopg's loaders (measured: 410 -> 300 us of
    CPU for a page of 30 orders, decoded and encoded again). Cast to text: psycopg would parse json.
    """
    pairs: list[Any] = []
    for field in ("product_id", "qty", "price_cents"):
        pairs += [literal_column(f"'{field}'"), _items.c[field]]
    item = func.json_build_object(*pairs)
    return (
        select(sql_cast(func.json_agg(aggregate_order_by(item, _items.c.product_id)), Text))
        .where(_items.c.order_id == order_id)
        .scalar_subquery()
        .label("items")
    )


_decode_items = msgspec.json.Decoder(list[OrderItemRead]).decode


def order_from_row(row: Sequence[Any]) -> OrderRead:
    """The API's order from its columns (``_ORDER_COLUMNS``, then ``items_json``)."""
    order_id, user_id, created_at, total_cents, status, cancelled_at, items_text = row[:7]
    items = _decode_items(items_text) if items_text else []
    return OrderRead(
        order_id,
        user_id,
        created_at.astimezone(UTC),
        total_cents,
        status,
        cancelled_at.astimezone(UTC) if cancelled_at is not None else None,
        items,
    )
