"""What ``serve`` says at start about the database: one clear line when it cannot work yet.

The service starts either way (the database may come up later, the catalog team may create
its table later); until then readiness answers 503 and orders answer 503 with the same reason.
"""

from __future__ import annotations

import logging

import psycopg
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from orders_service.config import Settings
from orders_service.db.failure_line import failure_line
from orders_service.db.readiness import READINESS_CHECK

logger = logging.getLogger("orders_service")


def check_database_at_start(settings: Settings) -> bool:
    """Log whether the database answers and holds every table and column the service uses."""
    sql, literals = READINESS_CHECK.compiled(PGDialect_psycopg(), settings.schema_translate_map)  # type: ignore[no-untyped-call]
    try:
        with psycopg.connect(settings.conninfo, connect_timeout=settings.db_connect_timeout) as connection:
            connection.execute(sql, literals)
    except psycopg.errors.UndefinedTable as exc:
        logger.error(
            "%s: orders and readiness answer 503 until it exists. The service needs %s.products "
            "(id integer, price_cents integer, stock integer) and its own tables in %s (alembic upgrade head)",
            exc.diag.message_primary,
            settings.catalog_schema,
            settings.db_schema,
        )
    except psycopg.errors.UndefinedColumn as exc:
        logger.error(
            "%s: the service needs %s.products (id, price_cents, stock)",
            exc.diag.message_primary,
            settings.catalog_schema,
        )
    except psycopg.errors.InsufficientPrivilege as exc:
        logger.error(
            "%s: run the grants of `orders-service print-grants %s`", exc.diag.message_primary, settings.db_user
        )
    except psycopg.Error as exc:
        logger.warning("%s: serving anyway; readiness answers 503 until it does", failure_line(settings, exc))
    else:
        logger.info(
            "database %s ready: schemas %s and %s", settings.db_name, settings.db_schema, settings.catalog_schema
        )
        return True
    return False
