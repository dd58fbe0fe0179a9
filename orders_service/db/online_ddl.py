"""Schema changes that a migration makes outside a transaction, safe to interrupt and run again.

Alembic runs a migration's steps in a transaction, rolled back whole if it is interrupted,
except those in an ``autocommit_block``: ``CREATE INDEX CONCURRENTLY`` cannot run in a
transaction, and each step there commits on its own. Interrupted there (Ctrl-C, a deploy job's
deadline, a lock timeout), a migration leaves what it committed and, for an index build, an
INVALID index; its version is not recorded, so the next run starts it again from its first step.
So every step of such a migration must find its own end state and carry on:

- columns added with ``IF NOT EXISTS`` (before the block, they may have been committed by it);
- an index built ``CONCURRENTLY`` is first looked up: an INVALID one (an interrupted build) is
  dropped and built again, never kept; a valid one is kept;
- every wait for a lock is bounded by ``DB_LOCK_TIMEOUT_MS`` outside the transaction too (a
  concurrent build waits for every transaction that could see the table): past it the step
  fails, the index stays INVALID, and the next run rebuilds it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from alembic import context, op
from sqlalchemy import text

_INDEX_VALID = text(
    "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid"
    " JOIN pg_namespace AS n ON n.oid = c.relnamespace WHERE n.nspname = :schema AND c.relname = :name"
)


@contextmanager
def outside_the_transaction(lock_timeout_ms: int) -> Iterator[None]:
    """Alembic's ``autocommit_block`` with ``lock_timeout`` for its statements; the migration's next transaction
    gets it back with ``SET LOCAL`` (nothing outlives a transaction: PgBouncer in transaction mode)."""
    bind = op.get_bind()
    with context.get_context().autocommit_block():
        bind.exec_driver_sql(f"SET lock_timeout = {int(lock_timeout_ms)}")
        try:
            yield
        finally:
            bind.exec_driver_sql("RESET lock_timeout")
    bind.exec_driver_sql(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}")


def create_index_concurrently(name: str, table: str, columns: Sequence[str], *, schema: str, **kwargs: Any) -> None:
    """Build ``name`` without blocking writes (inside ``outside_the_transaction``); an INVALID one is rebuilt."""
    valid = op.get_bind().execute(_INDEX_VALID, {"schema": schema, "name": name}).scalar()
    if valid is False:
        op.drop_index(name, table, schema=schema, postgresql_concurrently=True, if_exists=True)
    op.create_index(name, table, columns, schema=schema, postgresql_concurrently=True, if_not_exists=True, **kwargs)


def drop_index_concurrently(name: str, table: str, *, schema: str) -> None:
    """Drop ``name`` without blocking reads or writes (inside ``outside_the_transaction``), if it is there."""
    op.drop_index(name, table, schema=schema, postgresql_concurrently=True, if_exists=True)
