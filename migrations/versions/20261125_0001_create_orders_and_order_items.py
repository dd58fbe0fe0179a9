"""Create orders and order_items.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import context, op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The schema exists already: env.py creates it when missing (its owner may lack CREATE on the database).
    schema = context.config.attributes["settings"].db_schema
    op.create_table(
        "orders",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("user_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.Column("total_cents", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("total_cents >= 0", name=op.f("ck_orders_total_cents_not_negative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orders")),
        schema=schema,
    )
    op.create_index(
        "ix_orders_user_id_created_at_id",
        "orders",
        ["user_id", sa.literal_column("created_at DESC"), sa.literal_column("id DESC")],
        schema=schema,
    )
    op.create_table(
        "order_items",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("order_id", sa.BigInteger(), nullable=False),
        sa.Column("product_id", sa.Integer(), nullable=False),
        sa.Column("qty", sa.Integer(), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_order_items_price_cents_not_negative")),
        sa.CheckConstraint("qty > 0", name=op.f("ck_order_items_qty_positive")),
        sa.ForeignKeyConstraint(
            ["order_id"],
            [f"{schema}.orders.id"],
            name=op.f("fk_order_items_order_id_orders"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_order_items")),
        schema=schema,
    )
    op.create_index(op.f("ix_order_items_order_id"), "order_items", ["order_id"], schema=schema)


def downgrade() -> None:
    # The schema stays: Alembic's version table lives in it.
    schema = context.config.attributes["settings"].db_schema
    op.drop_table("order_items", schema=schema)
    op.drop_table("orders", schema=schema)
