"""psycopg caches the conversion of the service's statements, the long ones included (a private setting of psycopg's:
``orders_service.db.engine.cache_statement_conversion``)."""

from __future__ import annotations

from psycopg import _queries as psycopg_queries
from psycopg.adapt import Transformer
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from orders_service.config import Settings
from orders_service.db.engine import CONVERSION_CACHE_LENGTH, cache_statement_conversion
from orders_service.orders.cancel_sql import CANCEL_ORDER
from orders_service.orders.place_sql import PLACE_ORDERS

LONGEST_SCHEMA_NAME = "s" * 63  # PostgreSQL's limit on a name


def test_every_statement_fits_the_conversion_cache_whatever_the_schema_names() -> None:
    settings = Settings.from_env({"DB_SCHEMA": LONGEST_SCHEMA_NAME, "CATALOG_SCHEMA": "c" * 63})
    dialect = PGDialect_psycopg()  # type: ignore[no-untyped-call]
    for statement in (PLACE_ORDERS, CANCEL_ORDER):
        sql, _ = statement.compiled(dialect, settings.schema_translate_map)
        assert len(sql.encode()) <= CONVERSION_CACHE_LENGTH, statement.name


def test_the_order_statement_is_converted_once_then_taken_from_the_cache() -> None:
    cache_statement_conversion()
    assert psycopg_queries.MAX_CACHED_STATEMENT_LENGTH >= CONVERSION_CACHE_LENGTH
    sql, _ = PLACE_ORDERS.compiled(PGDialect_psycopg(), Settings.from_env({}).schema_translate_map)  # type: ignore[no-untyped-call]
    assert len(sql.encode()) > 4096  # past psycopg's own limit: without the setting it would never be cached
    params = {
        "owners": ["u"],
        "keys": [None],
        "hashes": [None],
        "line_orders": [1],
        "line_products": [1],
        "line_qtys": [1],
        "line_held": [0],
        "wait_for": 1,
        "orders": 1,
    }
    psycopg_queries.PostgresQuery(Transformer()).convert(sql, params)
    hits = psycopg_queries._query2pg.cache_info().hits
    psycopg_queries.PostgresQuery(Transformer()).convert(sql, params)
    assert psycopg_queries._query2pg.cache_info().hits == hits + 1
