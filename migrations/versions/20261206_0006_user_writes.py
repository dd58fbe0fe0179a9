"""Each user's write version, for reads from replicas that see the user's own writes (read-your-writes).

The orders and cancellations of a user bump ``version`` in their own transaction when read replicas
are configured (``DB_READ_HOSTS``). A read goes to a replica only when the replica's ``version``
for the user is the primary's: it has replayed every write of that user.

A new table: nothing else changes, safe during a rolling deploy and in one transaction.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.create_table(
        "user_writes",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_writes")),
        schema=schema,
        if_not_exists=True,
    )


def downgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.drop_table("user_writes", schema=schema, if_exists=True)
