"""The privileges the service's runtime role needs, and nothing more (``orders-service print-grants``).

The runtime role runs no DDL: migrations run as the owner of ``DB_SCHEMA``. It reads and
updates the catalog's stock, and reads and writes its own tables as the code does. Three
different roles hold the right to give this, so the SQL comes in three parts, one per audience:
the schema's owner (after every migration), the DBA (the role's defaults) and the catalog team.
"""

from __future__ import annotations

from typing import Literal

from orders_service.config import Settings

Audience = Literal["schema-owner", "dba", "catalog-team"]
AUDIENCES: tuple[Audience, ...] = ("schema-owner", "dba", "catalog-team")

# (table in DB_SCHEMA, privileges) - exactly the statements in order_sql.py, outbox.py and the purge commands.
OWN_TABLE_PRIVILEGES = (
    ("orders", "SELECT, INSERT, UPDATE (status, cancelled_at)"),
    ("order_items", "SELECT, INSERT"),
    ("idempotency_keys", "SELECT, INSERT, UPDATE (order_id), DELETE"),
    ("outbox", "SELECT, INSERT, UPDATE (published_at, attempts, next_attempt_at), DELETE"),
    ("outbox_relay_lease", "SELECT, INSERT, UPDATE (holder, expires_at)"),
    ("user_writes", "SELECT, INSERT, UPDATE (version)"),
)
# The sequences of the ids that inserts take by default (migration 0005).
OWN_SEQUENCES = ("order_ids", "outbox_ids")
CATALOG_PRIVILEGES = "SELECT (id, price_cents, stock), UPDATE (stock)"


def grants_sql(settings: Settings, role: str, audience: Audience | None = None) -> str:
    """The SQL that gives ``role`` what it needs: the part of ``audience``, or all three parts in order."""
    grantee = '"' + role.replace('"', '""') + '"'
    parts = {
        "schema-owner": _schema_owner_part,
        "dba": _dba_part,
        "catalog-team": _catalog_team_part,
    }
    chosen = AUDIENCES if audience is None else (audience,)
    lines = [
        f"-- Orders service runtime role {grantee}: DB_SCHEMA={settings.db_schema}, "
        f"CATALOG_SCHEMA={settings.catalog_schema}.",
    ]
    for name in chosen:
        lines += ["", *parts[name](settings, grantee)]
    return "\n".join(lines) + "\n"


def _schema_owner_part(settings: Settings, grantee: str) -> list[str]:
    own = f'"{settings.db_schema}"'
    return [
        f"-- [schema-owner] Run as the owner of schema {own} (the role that runs the migrations), after every",
        "-- migration (a new or re-created table has no grants):",
        f"GRANT USAGE ON SCHEMA {own} TO {grantee};",
        *(f"GRANT {privileges} ON {own}.{table} TO {grantee};" for table, privileges in OWN_TABLE_PRIVILEGES),
        *(f"GRANT USAGE ON SEQUENCE {own}.{sequence} TO {grantee};" for sequence in OWN_SEQUENCES),
    ]


def _dba_part(settings: Settings, grantee: str) -> list[str]:
    lines = [
        "-- [dba] Run as the DBA (a superuser, or the role that created the runtime role) or as the runtime role",
        "-- itself, once: the timeouts as the role's defaults, so that the service does not send them with every",
        "-- transaction. If they differ from DB_LOCK_TIMEOUT_MS/DB_STATEMENT_TIMEOUT_MS, the service sends its own.",
        f"ALTER ROLE {grantee} SET lock_timeout = {settings.db_lock_timeout_ms};",
        f"ALTER ROLE {grantee} SET statement_timeout = {settings.db_statement_timeout_ms};",
    ]
    if settings.events_await_standbys:
        lines += [
            "-- EVENTS_AWAIT_STANDBYS: the relay reads the standbys' positions in pg_stat_replication, which only",
            "-- members of pg_read_all_stats see (a superuser grants it):",
            f"GRANT pg_read_all_stats TO {grantee};",
        ]
    return lines


def _catalog_team_part(settings: Settings, grantee: str) -> list[str]:
    catalog = f'"{settings.catalog_schema}"'
    return [
        f"-- [catalog-team] Run as the owner of {catalog}.products (the catalog team):",
        f"GRANT USAGE ON SCHEMA {catalog} TO {grantee};",
        f"GRANT {CATALOG_PRIVILEGES} ON {catalog}.products TO {grantee};",
    ]
