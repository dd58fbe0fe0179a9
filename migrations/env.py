"""Alembic environment: connection and schema names come from the service's Settings.

Works for ``alembic upgrade head`` (settings from the environment), for Advanced-Alchemy's
``litestar database upgrade``, and programmatically with ``config.attributes["settings"]``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import Connection

from orders_service.config import Settings
from orders_service.database import ALEMBIC_VERSION_TABLE
from orders_service.models import Base

config = context.config
settings: Settings = config.attributes.get("settings") or Settings.from_env()
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
        context.execute(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"')
        context.run_migrations()


def run_migrations_online(connection: Connection) -> None:
    # The version table lives in DB_SCHEMA, so the schema must exist before Alembic touches it.
    connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{SCHEMA}"'))
    connection.commit()
    configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_migrations_online(connection)
else:
    engine = create_engine(settings.database_url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        run_migrations_online(connection)
    engine.dispose()
