"""Outbox retries: a per-event attempt count and next attempt time, and the index the relay reads by.

An event the broker refused (nacked: a queue full with ``reject-publish``) or could not route
(returned: no queue bound for its type) stays pending and is tried again after a back-off that
doubles per attempt. New events have ``next_attempt_at = -infinity``: they come first, in id order.

Safe during a rolling deploy: the columns have constant defaults (a catalog change, no table
rewrite), and the index is built and the old one dropped ``CONCURRENTLY`` (no lock that blocks
the orders' inserts). The old code ignores both columns.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PENDING = sa.text("published_at IS NULL")


def upgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.add_column("outbox", sa.Column("attempts", sa.Integer(), server_default="0", nullable=False), schema=schema)
    op.add_column(
        "outbox",
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), server_default="-infinity", nullable=False),
        schema=schema,
    )
    with context.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_due",
            "outbox",
            ["next_attempt_at", "id"],
            schema=schema,
            postgresql_where=PENDING,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index("ix_outbox_pending", "outbox", schema=schema, postgresql_concurrently=True, if_exists=True)


def downgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    with context.get_context().autocommit_block():
        op.create_index(
            "ix_outbox_pending",
            "outbox",
            ["id"],
            schema=schema,
            postgresql_where=PENDING,
            postgresql_concurrently=True,
            if_not_exists=True,
        )
        op.drop_index("ix_outbox_due", "outbox", schema=schema, postgresql_concurrently=True, if_exists=True)
    op.drop_column("outbox", "next_attempt_at", schema=schema)
    op.drop_column("outbox", "attempts", schema=schema)
