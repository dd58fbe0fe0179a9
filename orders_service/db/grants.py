"""The privileges the service's runtime role needs, and nothing more (``orders-service print-grants``).

The runtime role runs no DDL: migrations run as the owner of ``DB_SCHEMA``. It reads and
updates the catalog's stock, and reads and writes its own tables as the code does.
"""

from __future__ import annotations

from orders_service.config import Settings

# (table in DB_SCHEMA, privileges) - exactly the statements in repositories.py, outbox.py and the purge commands.
OWN_TABLE_PRIVILEGES = (
    ("orders", "SELECT, INSERT, UPDATE (status, cancelled_at)"),
    ("order_items", "SELECT, INSERT"),
    ("idempotency_keys", "SELECT, INSERT, UPDATE (order_id), DELETE"),
    ("outbox", "SELECT, INSERT, UPDATE (published_at), DELETE"),
    ("outbox_relay_lease", "SELECT, INSERT, UPDATE (holder, expires_at)"),
)
CATALOG_PRIVILEGES = "SELECT (id, price_cents, stock), UPDATE (stock)"


def grants_sql(settings: Settings, role: str) -> str:
    """The GRANT statements for ``role``, in two parts: one for our schema's owner, one for the catalog's."""
    own, catalog = f'"{settings.db_schema}"', f'"{settings.catalog_schema}"'
    grantee = '"' + role.replace('"', '""') + '"'
    lines = [
        f"-- Orders service runtime role {grantee}: DB_SCHEMA={settings.db_schema}, "
        f"CATALOG_SCHEMA={settings.catalog_schema}.",
        f"-- Run as the owner of schema {own} (the role that runs the migrations), after them:",
        f"GRANT USAGE ON SCHEMA {own} TO {grantee};",
        *(f"GRANT {privileges} ON {own}.{table} TO {grantee};" for table, privileges in OWN_TABLE_PRIVILEGES),
        "-- The timeouts as the role's defaults (by the DBA, or the role itself): the service then does not",
        "-- send them with every transaction. If they differ from DB_LOCK_TIMEOUT_MS/DB_STATEMENT_TIMEOUT_MS,",
        "-- the service sends its own.",
        f"ALTER ROLE {grantee} SET lock_timeout = {settings.db_lock_timeout_ms};",
        f"ALTER ROLE {grantee} SET statement_timeout = {settings.db_statement_timeout_ms};",
        f"-- Run as the owner of {catalog}.products (the catalog team):",
        f"GRANT USAGE ON SCHEMA {catalog} TO {grantee};",
        f"GRANT {CATALOG_PRIVILEGES} ON {catalog}.products TO {grantee};",
    ]
    return "\n".join(lines) + "\n"
