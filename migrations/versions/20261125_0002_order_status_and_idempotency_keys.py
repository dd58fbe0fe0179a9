"""Order status and cancellation time; idempotency keys.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.add_column(
        "orders", sa.Column("status", sa.String(length=16), server_default="placed", nullable=False), schema=schema
    )
    op.add_column("orders", sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True), schema=schema)
    op.create_check_constraint(
        op.f("ck_orders_status_known"), "orders", "status IN ('placed', 'cancelled')", schema=schema
    )
    op.create_check_constraint(
        op.f("ck_orders_cancelled_at_iff_cancelled"),
        "orders",
        "(status = 'cancelled') = (cancelled_at IS NOT NULL)",
        schema=schema,
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["order_id"],
            [f"{schema}.orders.id"],
            name=op.f("fk_idempotency_keys_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "key", name=op.f("pk_idempotency_keys")),
        schema=schema,
    )
    op.create_index(op.f("ix_idempotency_keys_created_at"), "idempotency_keys", ["created_at"], schema=schema)
    op.create_index(op.f("ix_idempotency_keys_order_id"), "idempotency_keys", ["order_id"], schema=schema)


def downgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.drop_table("idempotency_keys", schema=schema)
    op.drop_constraint(op.f("ck_orders_cancelled_at_iff_cancelled"), "orders", schema=schema)
    op.drop_constraint(op.f("ck_orders_status_known"), "orders", schema=schema)
    op.drop_column("orders", "cancelled_at", schema=schema)
    op.drop_column("orders", "status", schema=schema)
