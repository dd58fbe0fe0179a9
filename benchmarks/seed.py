"""The benchmark's own database: 1,000 products with huge stock, readers with history, a long history."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg

from orders_service.config import Settings

PRODUCTS = 1000
STOCK = 2_000_000_000  # huge: no order is ever short
READERS = 1000
ORDERS_PER_READER = 30
HEAVY_USER, HEAVY_ORDERS = "heavy", 100_000
LIGHT_USER, LIGHT_ORDERS = "light", 10


@dataclass(frozen=True)
class Seeded:
    last_seeded_order: int  # orders above this id were placed by the benchmark


def seed(settings: Settings) -> Seeded:
    """Insert the catalog and the history directly (not through the service); ``settings``: an admin's."""
    orders, catalog = settings.db_schema, settings.catalog_schema
    with psycopg.connect(settings.conninfo, autocommit=True) as connection:
        connection.execute(
            f"INSERT INTO {catalog}.products (id, price_cents, stock) "
            f"SELECT id, 100 + id % 900, {STOCK} FROM generate_series(1, {PRODUCTS}) AS id"
        )
        # Readers: 30 orders each of 1-3 items, spread over the last 30 days; then the two long histories.
        connection.execute(
            f"INSERT INTO {orders}.orders (user_id, total_cents, created_at) "
            f"SELECT 'reader-' || (n % {READERS}), 0, now() - n * interval '1 minute' "
            f"FROM generate_series(1, {READERS * ORDERS_PER_READER}) AS n"
        )
        for user, count in ((HEAVY_USER, HEAVY_ORDERS), (LIGHT_USER, LIGHT_ORDERS)):
            connection.execute(
                f"INSERT INTO {orders}.orders (user_id, total_cents, created_at) "
                f"SELECT %s, 0, now() - n * interval '1 second' FROM generate_series(1, {count}) AS n",
                [user],
            )
        connection.execute(
            f"INSERT INTO {orders}.order_items (order_id, product_id, qty, price_cents) "
            f"SELECT o.id, 1 + (o.id * 7 + k * 131) % {PRODUCTS}, 1 + k, 100 "
            f"FROM {orders}.orders o, generate_series(0, (o.id % 3)) AS k"
        )
        connection.execute(
            f"UPDATE {orders}.orders o SET total_cents = s.total "
            f"FROM (SELECT order_id, sum(qty * price_cents) AS total FROM {orders}.order_items GROUP BY order_id) s "
            "WHERE o.id = s.order_id"
        )
        for table in (f"{catalog}.products", f"{orders}.orders", f"{orders}.order_items"):
            connection.execute(f"VACUUM ANALYZE {table}")
        (last,) = connection.execute(f"SELECT max(id) FROM {orders}.orders").fetchone() or (0,)
    return Seeded(last_seeded_order=int(last))


def count_orders(settings: Settings, seeded: Seeded) -> int:
    """Orders placed through a service since seeding."""
    with psycopg.connect(settings.conninfo) as connection:
        (count,) = connection.execute(
            f"SELECT count(*) FROM {settings.db_schema}.orders WHERE id > %s", [seeded.last_seeded_order]
        ).fetchone() or (0,)
    return int(count)


def check_invariants(
    settings: Settings, seeded: Seeded, *, new_orders: int, answered: int, in_flight: int, counted: int | None
) -> dict[str, bool]:
    """After a run that placed orders: stock taken = quantities ordered, per product; no order without
    items; the orders the run added = its 2xx creates. wrk stops with up to one request per
    connection in flight (placed, never answered to wrk): so ``answered <= new <= answered +
    in_flight``; the product's own ``orders_created_total`` (``counted``) must match exactly."""
    orders, catalog = settings.db_schema, settings.catalog_schema
    with psycopg.connect(settings.conninfo) as connection:
        stock_matches = connection.execute(
            f"SELECT bool_and({STOCK} - p.stock = coalesce(s.qty, 0)) FROM {catalog}.products p "
            f"LEFT JOIN (SELECT i.product_id, sum(i.qty) AS qty FROM {orders}.order_items i "
            f"WHERE i.order_id > %s GROUP BY i.product_id) s ON s.product_id = p.id",
            [seeded.last_seeded_order],
        ).fetchone()
        (empty,) = connection.execute(
            f"SELECT count(*) FROM {orders}.orders o WHERE o.id > %s "
            f"AND NOT EXISTS (SELECT 1 FROM {orders}.order_items i WHERE i.order_id = o.id)",
            [seeded.last_seeded_order],
        ).fetchone() or (0,)
    checks = {
        "stock taken = quantities ordered": bool(stock_matches and stock_matches[0]),
        "no order without items": int(empty) == 0,
        "orders = 2xx creates (+ in flight when wrk stopped)": answered <= new_orders <= answered + in_flight,
    }
    if counted is not None:
        checks["orders = the service's orders_created_total"] = counted == new_orders
    return checks
