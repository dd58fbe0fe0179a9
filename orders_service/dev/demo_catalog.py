"""The catalog's ``products`` table, for local runs and tests only (production owns its own)."""

from __future__ import annotations

from sqlalchemy import Connection, inspect, text

from orders_service.config import Settings

DEMO_PRODUCTS = [
    # (id, price_cents, stock)
    (1, 1299, 100),
    (2, 2500, 50),
    (3, 499, 0),
]


def create_products_table(connection: Connection, settings: Settings) -> None:
    """Create ``CATALOG_SCHEMA.products (id, price_cents, stock)`` if it does not exist."""
    schema = settings.catalog_schema
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    connection.execute(
        text(
            f'CREATE TABLE IF NOT EXISTS "{schema}".products ('
            " id integer PRIMARY KEY,"
            " price_cents integer NOT NULL CHECK (price_cents >= 0),"
            " stock integer NOT NULL CHECK (stock >= 0))"
        )
    )


def ensure_demo_catalog(connection: Connection, settings: Settings) -> bool:
    """Create the products table with a few demo products, only if the table is missing."""
    if inspect(connection).has_table("products", schema=settings.catalog_schema):
        return False
    create_products_table(connection, settings)
    connection.execute(
        text(f'INSERT INTO "{settings.catalog_schema}".products (id, price_cents, stock) VALUES (:id, :price, :stock)'),
        [{"id": id_, "price": price, "stock": stock} for id_, price, stock in DEMO_PRODUCTS],
    )
    return True
