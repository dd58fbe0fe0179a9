"""Outbox retries: a per-event attempt count and next attempt time, and the index the relay reads by.

An event the broker refused (nacked: a queue full with ``reject-publish``) or could not route
(returned: no queue bound for its type) stays pending and is tried again after a back-off that
doubles per attempt. New events have ``next_attempt_at = -infinity``: they come first, in id order.

Safe during a rolling deploy: the columns have constant defaults (a catalog change, no table
rewrite), and the index is built and the old one dropped ``CONCURRENTLY`` (no lock that blocks
the orders' inserts). The old code ignores both columns. Safe to interrupt at any step and run
again (``online_ddl``).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

from orders_service.db.online_ddl import create_index_concurrently, drop_index_concurrently, outside_the_transaction

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("published_at IS NULL")


def upgrade() -> None:
    settings = context.config.attributes["settings"]
    schema = settings.db_schema
    # Re-runnable: interrupted in the block below, the columns are committed and the version is not (online_ddl).
    op.add_column(
        "outbox",
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        schema=schema,
        if_not_exists=True,
    )
    op.add_column(
        "outbox",
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default="-infinity", nullable=False),
        schema=schema,
        if_not_exists=True,
    )
    with outside_the_transaction(settings.db_lock_timeout_ms):
        create_index_concurrently(
            "ix_outbox_due", "outbox", ["next_attempt_at", "id"], schema=schema, postgresql_where=PENDING
        )
        drop_index_concurrently("ix_outbox_pending", "outbox", schema=schema)


def downgrade() -> None:
    settings = context.config.attributes["settings"]
    schema = settings.db_schema
    with outside_the_transaction(settings.db_lock_timeout_ms):
        create_index_concurrently("ix_outbox_pending", "outbox", ["id"], schema=schema, postgresql_where=PENDING)
        drop_index_concurrently("ix_outbox_due", "outbox", schema=schema)
    op.drop_column("outbox", "next_attempt_at", schema=schema)
    op.drop_column("outbox", "attempts", schema=schema)
