"""The lock rule, written once for every statement that changes stock (placing and cancelling orders).

A statement locks the product rows it changes with ``FOR NO KEY UPDATE`` (the catalog team's
inserts into tables with a foreign key to ``products`` are not blocked) and reads price and stock
under the lock. It **waits for one row at most, and only before it holds any**: ``waited`` locks
the row of ``wait_for`` first (waiting up to ``lock_timeout``); every other row is then locked in
ascending id order with ``SKIP LOCKED``. A row skipped that way is *busy*: the statement then
changes nothing for the orders that need it, names it, and the caller tries again later, waiting
for that row alone (``ProductQueues``).

So no transaction of the service ever holds one row while it waits for another (hold-and-wait):
a product held for long elsewhere (a catalog job) stalls only the orders that contain it, and two
of the service's transactions never deadlock on products, whatever order their ids come in.
"""

from __future__ import annotations

PRODUCT_COLUMNS = "p.id, p.price_cents, p.stock"


def waited_product(wanted: str, wait_for: str) -> str:
    """The CTE ``waited``: the row ``wait_for`` (an SQL integer expression; NULL: none) if ``wanted`` (a query of
    product ids) holds it, locked first and waited for."""
    return f"""
    waited AS MATERIALIZED (
        SELECT {PRODUCT_COLUMNS} FROM {{catalog}}.products AS p
        WHERE p.id = {wait_for} AND p.id IN ({wanted})
        FOR NO KEY UPDATE
    )"""


def other_products(wanted: str, wait_for: str, *, after: str = "waited") -> str:
    """The CTE ``unwaited``: every other row of ``wanted``, locked once ``after`` (a CTE) is, in ascending id order,
    skipping the rows another transaction holds; and ``locked``, the rows got (``waited`` and ``unwaited``)."""
    return f"""
    unwaited AS MATERIALIZED (
        SELECT {PRODUCT_COLUMNS} FROM {{catalog}}.products AS p
        WHERE p.id IN ({wanted}) AND p.id IS DISTINCT FROM {wait_for} AND (SELECT count(*) FROM {after}) >= 0
        ORDER BY p.id
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    locked AS (SELECT * FROM waited UNION ALL SELECT * FROM unwaited)"""


def product_exists(product_id: str) -> str:
    """Whether the catalog has ``product_id``: a wanted row not locked is busy if it exists, else unknown."""
    return f"EXISTS (SELECT FROM {{catalog}}.products AS p WHERE p.id = {product_id})"
