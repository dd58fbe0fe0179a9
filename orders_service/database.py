"""The Advanced-Alchemy (SQLAlchemy async + psycopg 3) configuration built from Settings."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import (
    AlembicAsyncConfig,
    AsyncSessionConfig,
    EngineConfig,
    SQLAlchemyAsyncConfig,
)

from orders_service.config import Settings

ALEMBIC_VERSION_TABLE = "alembic_version"


def sqlalchemy_config(settings: Settings) -> SQLAlchemyAsyncConfig:
    """Engine, sessions and migrations for ``settings``; no connection is opened here."""
    return SQLAlchemyAsyncConfig(
        connection_string=settings.database_url.render_as_string(hide_password=False),
        engine_config=EngineConfig(
            pool_size=settings.db_pool_size,
            max_overflow=0,
            pool_timeout=settings.db_pool_timeout,  # type: ignore[arg-type]  # SQLAlchemy takes float seconds
            # Bounded waits: a row lock held elsewhere must not park every pooled connection forever.
            connect_args={
                "options": f"-c lock_timeout={settings.db_lock_timeout_ms} "
                f"-c statement_timeout={settings.db_statement_timeout_ms}"
            },
            pool_pre_ping=False,
            execution_options={"schema_translate_map": settings.schema_translate_map},
        ),
        session_config=AsyncSessionConfig(expire_on_commit=False, autoflush=False),
        # Write paths commit explicitly; the default handler only closes the session.
        create_all=False,
        alembic_config=AlembicAsyncConfig(
            script_location="migrations",
            toml_file="pyproject.toml",
            version_table_name=ALEMBIC_VERSION_TABLE,
            version_table_schema=settings.db_schema,
        ),
    )
