"""Alembic environment: connection and schema names come from the service's Settings.

Works for ``alembic upgrade head`` (settings from the environment), for Advanced-Alchemy's
``litestar database upgrade``, and programmatically with ``config.attributes["settings"]``.
"""

from __future__ import annotations

import sys

from alembic import context
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from orders_service.config import ConfigError, Settings
from orders_service.db.engine import ALEMBIC_VERSION_TABLE
from orders_service.db.failure_line import failure_line
from orders_service.db.models import Base

LOCK_NOT_AVAILABLE = "55P03"

config = context.config
try:
    settings: Settings = config.attributes.get("settings") or Settings.from_env()
except ConfigError as exc:
    # One line, as `orders-service serve` says it, not a traceback.
    print(f"orders-service: {exc}", file=sys.stderr)
    raise SystemExit(2) from None
config.attributes["settings"] = settings
SCHEMA = settings.db_schema


def target_metadata() -> MetaData:
    """Our tables, moved from the placeholder schema ``orders`` to ``DB_SCHEMA``."""
    metadata = MetaData(naming_convention=Base.metadata.naming_convention)
    for table in Base.metadata.sorted_tables:
        table.to_metadata(metadata, schema=SCHEMA)
    return metadata


def include_name(name: str | None, type_: str, _parent: object) -> bool:
    """Autogenerate looks at ``DB_SCHEMA`` only, never at the catalog's or anyone else's schema."""
    return name == SCHEMA if type_ == "schema" else True


def configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata(),
        version_table=ALEMBIC_VERSION_TABLE,
        version_table_schema=SCHEMA,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def run_migrations_offline() -> None:
    configure(url=settings.database_url, literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.execute(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = '{SCHEMA}') "
            f'THEN CREATE SCHEMA "{SCHEMA}"; END IF; END $$'
        )
        context.execute(f"SET LOCAL lock_timeout = {settings.db_lock_timeout_ms}")
        context.run_migrations()


def ensure_schema(connection: Connection) -> None:
    """Create ``DB_SCHEMA`` only when it is missing: its owner may lack CREATE on the database.

    The version table lives in DB_SCHEMA, so the schema must exist before Alembic touches it.
    """
    exists = connection.execute(text("SELECT 1 FROM pg_namespace WHERE nspname = :schema"), {"schema": SCHEMA})
    if exists.scalar() is None:
        connection.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    connection.commit()


def run_migrations_online(connection: Connection) -> None:
    ensure_schema(connection)
    configure(connection=connection)
    with context.begin_transaction():
        # Waiting behind a long transaction for an ACCESS EXCLUSIVE lock would queue every request
        # behind this migration: give up after DB_LOCK_TIMEOUT_MS instead, and retry later.
        # SET LOCAL: nothing outlives the transaction (PgBouncer in transaction mode).
        connection.execute(text(f"SET LOCAL lock_timeout = {settings.db_lock_timeout_ms}"))
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations_online(connection)
else:
    engine = create_engine(settings.database_url, poolclass=pool.NullPool)
    try:
        connection = engine.connect()
    except DBAPIError as exc:
        # One line naming what was tried, as the service's commands say it, not a traceback.
        print(f"orders-service: {failure_line(settings, exc)}", file=sys.stderr)
        raise SystemExit(1) from None
    try:
        with connection:
            run_migrations_online(connection)
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
            raise
        # Every step is re-runnable (orders_service/db/online_ddl.py): say so in one line, not a traceback.
        print(
            f"orders-service: the migration gave up waiting for a lock after DB_LOCK_TIMEOUT_MS "
            f"({settings.db_lock_timeout_ms} ms): a long transaction holds one of its tables; "
            "run it again once that transaction ends",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    finally:
        engine.dispose()
