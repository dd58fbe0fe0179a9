"""Tables: ``orders`` and ``order_items`` (ours) and the catalog's ``products`` (theirs).

Tables are declared in the placeholder schemas ``orders`` and ``catalog``; the engine's
``schema_translate_map`` (see ``Settings.schema_translate_map``) points them at the
configured ``DB_SCHEMA`` and ``CATALOG_SCHEMA`` at run time.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final, Literal
from uuid import UUID

from advanced_alchemy.base import CommonTableAttributes
from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    FetchedValue,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Uuid,
    func,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

USER_ID_MAX_LENGTH = 255
IDEMPOTENCY_KEY_MAX_LENGTH = 255
OrderStatus = Literal["placed", "cancelled"]

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(CommonTableAttributes, DeclarativeBase):
    """Base of the tables this service owns; ``Base.metadata`` is what the migrations manage."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Order(Base):
    __tablename__ = "orders"
    __table_args__ = (
        CheckConstraint("total_cents >= 0", name="total_cents_not_negative"),
        CheckConstraint("status IN ('placed', 'cancelled')", name="status_known"),
        CheckConstraint("(status = 'cancelled') = (cancelled_at IS NOT NULL)", name="cancelled_at_iff_cancelled"),
        {"schema": "orders"},
    )

    # timeline * 2^40 + a sequence value: never handed out twice, even after a failover (migration 0005)
    id: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue(), primary_key=True)
    user_id: Mapped[str] = mapped_column(String(USER_ID_MAX_LENGTH))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    total_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16), server_default="placed")
    cancelled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    items: Mapped[list[OrderItem]] = relationship(
        back_populates="order",
        lazy="raise",
        cascade="all, delete-orphan",
        passive_deletes=True,
    )


# Serves GET /orders/me: one user's orders, newest first, read in index order.
Index(
    "ix_orders_user_id_created_at_id",
    Order.user_id,
    Order.created_at.desc(),
    Order.id.desc(),
)


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = (
        CheckConstraint("qty > 0", name="qty_positive"),
        CheckConstraint("price_cents >= 0", name="price_cents_not_negative"),
        {"schema": "orders"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("orders.orders.id", ondelete="CASCADE"), index=True)
    product_id: Mapped[int] = mapped_column(Integer)
    qty: Mapped[int] = mapped_column(Integer)
    price_cents: Mapped[int] = mapped_column(Integer)

    order: Mapped[Order] = relationship(back_populates="items", lazy="raise")


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``, scoped to its user, remembering the order it created.

    Inserted in the order's transaction, so a key exists only for an order that exists; deleting
    keys (purging old ones) never touches orders, deleting an order deletes its key.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = {"schema": "orders"}

    user_id: Mapped[str] = mapped_column(String(USER_ID_MAX_LENGTH), primary_key=True)
    key: Mapped[str] = mapped_column(String(IDEMPOTENCY_KEY_MAX_LENGTH), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    order_id: Mapped[int | None] = mapped_column(ForeignKey("orders.orders.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), index=True)


EventType = Literal["orders.order.placed", "orders.order.cancelled"]
ORDER_PLACED: Final = "orders.order.placed"
ORDER_CANCELLED: Final = "orders.order.cancelled"
EVENT_TYPE_MAX_LENGTH = 64


class OutboxEvent(Base):
    """An event to publish, written in the transaction of the change it announces (the transactional outbox).

    Only the facts are stored; the relay builds the CloudEvent from the order's rows at publish time
    (an order's lines, prices, total, user and creation time never change). No foreign key to
    ``orders``: it would add a referential check to every order's insert, and the service never
    deletes orders.
    """

    __tablename__ = "outbox"
    __table_args__ = (
        CheckConstraint("type IN ('orders.order.placed', 'orders.order.cancelled')", name="type_known"),
        # The relay reads the due pending events: new ones (-infinity) in id order, then the retried ones
        # once their back-off has passed. Published ones leave the index.
        Index("ix_outbox_due", "next_attempt_at", "id", postgresql_where=text("published_at IS NULL")),
        {"schema": "orders"},
    )

    # timeline * 2^40 + a sequence value: never handed out twice, even after a failover (migration 0005)
    id: Mapped[int] = mapped_column(BigInteger, server_default=FetchedValue(), primary_key=True)
    event_id: Mapped[UUID] = mapped_column(Uuid, server_default=func.gen_random_uuid())
    order_id: Mapped[int] = mapped_column(BigInteger)
    type: Mapped[str] = mapped_column(String(EVENT_TYPE_MAX_LENGTH))
    occurred_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Tries the broker refused or could not route; the next one waits until next_attempt_at.
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default="-infinity")


class UserWrite(Base):
    """How many times a user's orders changed while read replicas were configured: a replica whose ``version``
    for the user is the primary's has replayed every one of them (``orders/read_routing.py``)."""

    __tablename__ = "user_writes"
    __table_args__ = {"schema": "orders"}

    user_id: Mapped[str] = mapped_column(String(USER_ID_MAX_LENGTH), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class RelayLease(Base):
    """Who may publish the outbox: one row per relay group, held by one relay until ``expires_at``.

    A lease with an expiry, renewed in short transactions, rather than a session advisory lock:
    it works through PgBouncer in transaction mode, and a relay that dies loses it by itself.
    """

    __tablename__ = "outbox_relay_lease"
    __table_args__ = {"schema": "orders"}

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class CatalogBase(CommonTableAttributes, DeclarativeBase):
    """The catalog team's tables: read and updated here, never created or migrated by us."""

    metadata = MetaData()


class Product(CatalogBase):
    __tablename__ = "products"
    __table_args__ = {"schema": "catalog"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    price_cents: Mapped[int] = mapped_column(Integer)
    stock: Mapped[int] = mapped_column(Integer)
