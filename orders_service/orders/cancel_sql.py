"""The statement that cancels an order: lock it and its products (the lock rule), restock, mark it, write the event.

It waits for one row at most, before it holds any (``lock_rule``): with no ``wait_for``, the
order's row (only a concurrent cancellation of the same order holds it), then its products with
``SKIP LOCKED``; with ``wait_for``, that product's row first, then the order's row and the other
products with ``SKIP LOCKED``. If a product row was skipped (``busy``) or the order's row was
(``order_busy``), nothing changes and the caller tries again, waiting for that row alone.

``restocked``, ``cancelled`` and ``cancelled_event`` read ``ready``, which exists only when the
order was placed and every product row it restocks is locked. The row that comes back is the order
as it is after this statement, its items by product id, and whether this call cancelled it; no row
when the user has no such order.
"""

from __future__ import annotations

from orders_service.db.models import ORDER_CANCELLED
from orders_service.db.statements import TextStatement
from orders_service.orders.lock_rule import other_products, product_exists, waited_product
from orders_service.orders.write_versions import bump_write_versions

_TO_RESTOCK = "SELECT item.product_id FROM item WHERE EXISTS (SELECT FROM owned WHERE owned.status = 'placed')"
_WAIT_FOR = "%(wait_for)s::integer"
_ORDER_COLUMNS = "o.id, o.user_id, o.created_at, o.total_cents, o.status, o.cancelled_at"
_THE_ORDER = "o.id IN (SELECT owned.id FROM owned)"


def _cancel_order(*, bump_versions: bool) -> TextStatement:
    """The statement; ``bump_versions``: it also bumps the user's write version when it cancels (``write_versions``:
    with read replicas)."""
    versions = f",\n    {bump_write_versions('SELECT %(owner)s::varchar FROM cancelled')}" if bump_versions else ""
    return TextStatement(
        "cancel_order_versioned" if bump_versions else "cancel_order",
        f"""
    WITH owned AS MATERIALIZED (
        SELECT o.id, o.status FROM {{orders}}.orders AS o
        WHERE o.id = %(order_id)s::bigint AND o.user_id = %(owner)s::varchar
    ),
    item AS MATERIALIZED (
        SELECT i.product_id, i.qty, i.price_cents FROM {{orders}}.order_items AS i
        WHERE i.order_id IN (SELECT owned.id FROM owned)
    ),
    {waited_product(_TO_RESTOCK, _WAIT_FOR)},
    target_waited AS MATERIALIZED (
        SELECT {_ORDER_COLUMNS} FROM {{orders}}.orders AS o
        WHERE {_THE_ORDER} AND {_WAIT_FOR} IS NULL
        FOR NO KEY UPDATE
    ),
    target_skipping AS MATERIALIZED (
        SELECT {_ORDER_COLUMNS} FROM {{orders}}.orders AS o
        WHERE {_THE_ORDER} AND {_WAIT_FOR} IS NOT NULL AND (SELECT count(*) FROM waited) >= 0
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    target AS (SELECT * FROM target_waited UNION ALL SELECT * FROM target_skipping),
    {other_products(_TO_RESTOCK, _WAIT_FOR, after="target")},
    busy AS (
        SELECT array_agg(item.product_id ORDER BY item.product_id) AS ids FROM item
        WHERE item.product_id IN ({_TO_RESTOCK}) AND item.product_id NOT IN (SELECT locked.id FROM locked)
            AND {product_exists("item.product_id")}
    ),
    ready AS MATERIALIZED (
        SELECT target.id FROM target WHERE target.status = 'placed' AND (SELECT busy.ids FROM busy) IS NULL
    ),
    restocked AS (
        UPDATE {{catalog}}.products AS p SET stock = p.stock + item.qty
        FROM item WHERE p.id = item.product_id AND EXISTS (SELECT FROM ready)
        RETURNING p.id
    ),
    cancelled AS (
        UPDATE {{orders}}.orders AS o SET status = 'cancelled', cancelled_at = now()
        WHERE o.id IN (SELECT ready.id FROM ready)
        RETURNING o.id, o.status, o.cancelled_at
    ),
    cancelled_event AS (
        INSERT INTO {{orders}}.outbox (order_id, type) SELECT cancelled.id, '{ORDER_CANCELLED}' FROM cancelled
    ){versions}
    SELECT target.id, target.user_id, target.created_at, target.total_cents,
        coalesce(cancelled.status, target.status) AS status,
        coalesce(cancelled.cancelled_at, target.cancelled_at) AS cancelled_at,
        (SELECT array_agg(item.product_id ORDER BY item.product_id) FROM item) AS product_ids,
        (SELECT array_agg(item.qty ORDER BY item.product_id) FROM item) AS qtys,
        (SELECT array_agg(item.price_cents ORDER BY item.product_id) FROM item) AS prices,
        cancelled.id IS NOT NULL AS cancelled_now,
        (SELECT busy.ids FROM busy) AS busy,
        false AS order_busy
    FROM target LEFT JOIN cancelled ON true
    UNION ALL
    SELECT owned.id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, false, NULL, true
    FROM owned WHERE NOT EXISTS (SELECT FROM target)
    """,
    )


CANCEL_ORDER = _cancel_order(bump_versions=False)
CANCEL_ORDER_VERSIONED = _cancel_order(bump_versions=True)
