"""The relay's SQL: the lease, the pending events with their orders, marking them published, purging.

Every statement is a short transaction of its own (or two in one pipeline): nothing is held across
transactions, so the relay works through PgBouncer in transaction mode like the request path.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    Interval,
    String,
    Table,
    bindparam,
    delete,
    exists,
    extract,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from orders_service.config import Settings
from orders_service.db.engine import create_engine
from orders_service.db.models import Order, OutboxEvent, RelayLease
from orders_service.db.statements import Statement, Step
from orders_service.db.transactions import TransactionRunner
from orders_service.events.cloudevents import PendingEvent
from orders_service.orders.order_rows import items_json

LEASE_NAME = "outbox"

_outbox = cast("Table", OutboxEvent.__table__)
_lease = cast("Table", RelayLease.__table__)
_orders = cast("Table", Order.__table__)

_name = bindparam("lease_name", type_=String)
_holder = bindparam("holder", type_=String)
_pending = _outbox.c.published_at.is_(None)


def _build_claim() -> Any:
    """Take or renew the lease when ``want``; in any case report whether we hold it, and the backlog.

    The upsert takes the lease when it is free or expired and renews it when it is ours; its time
    is the database's, the one clock every relay shares.
    """
    claimed = (
        pg_insert(_lease)
        .from_select(
            ["name", "holder", "expires_at"],
            select(_name, _holder, func.now() + bindparam("ttl", type_=Interval)).where(
                bindparam("want", type_=Boolean)
            ),
        )
        .on_conflict_do_update(
            index_elements=[_lease.c.name],
            set_={"holder": literal_column("excluded.holder"), "expires_at": literal_column("excluded.expires_at")},
            where=or_(_lease.c.holder == literal_column("excluded.holder"), _lease.c.expires_at < func.now()),
        )
        .returning(_lease.c.holder)
        .cte("claimed")
    )
    backlog = select(func.count().label("pending"), func.min(_outbox.c.occurred_at).label("oldest")).where(_pending)
    backlog_cte = backlog.cte("backlog")
    return select(
        exists(select(claimed.c.holder)).label("held"),
        backlog_cte.c.pending,
        extract("epoch", func.now() - backlog_cte.c.oldest).label("oldest_age"),
    ).select_from(backlog_cte)


def _build_pending_batch() -> Any:
    """The oldest pending events with their orders, in outbox id order; nothing unless we hold the lease.

    Run after ``CLAIM`` in the same transaction, so it sees the lease as the claim left it.
    """
    held = exists(
        select(_lease.c.name).where(
            _lease.c.name == _name, _lease.c.holder == _holder, _lease.c.expires_at > func.now()
        )
    )
    return (
        select(
            _outbox.c.id,
            _outbox.c.event_id,
            _outbox.c.type,
            _outbox.c.occurred_at,
            _outbox.c.order_id,
            _orders.c.user_id,
            _orders.c.created_at,
            _orders.c.total_cents,
            _orders.c.cancelled_at,
            items_json(_outbox.c.order_id),
        )
        .select_from(_outbox.outerjoin(_orders, _orders.c.id == _outbox.c.order_id))
        .where(_pending, held)
        .order_by(_outbox.c.id)
        .limit(bindparam("limit", type_=Integer))
    )


CLAIM = Statement("claim_outbox_lease", _build_claim())
PENDING_BATCH = Statement("pending_events", _build_pending_batch())
MARK_PUBLISHED = Statement(
    "mark_events_published",
    update(_outbox)
    .where(_outbox.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger))), _pending)
    .values(published_at=func.now()),
)
RELEASE = Statement(
    "release_outbox_lease",
    update(_lease).where(_lease.c.name == _name, _lease.c.holder == _holder).values(expires_at=func.now()),
)
_purged = (
    delete(_outbox)
    .where(
        _outbox.c.id.in_(
            select(_outbox.c.id)
            .where(_outbox.c.published_at < bindparam("cutoff", type_=DateTime(timezone=True)))
            .order_by(_outbox.c.id)
            .limit(bindparam("limit", type_=Integer))
        )
    )
    .returning(_outbox.c.id)
    .cte("purged")
)
PURGE_BATCH = Statement("purge_published_events", select(func.count()).select_from(_purged))


class Outbox:
    """The relay's access to the outbox, through a TransactionRunner of its own (never the request pool)."""

    def __init__(self, runner: TransactionRunner, holder: str, *, lease_ttl_seconds: float) -> None:
        self.runner = runner
        self.holder = holder
        self._lease = {"lease_name": LEASE_NAME, "holder": holder}
        self._ttl = lease_ttl_seconds

    async def claim(
        self, *, want: bool, limit: int, published: list[int] | None = None
    ) -> tuple[bool, int, float, list[PendingEvent]]:
        """Take or renew the lease (when ``want``) and read up to ``limit`` pending events if we hold it.

        ``published``: events the broker confirmed since the last cycle, marked first in the same
        transaction (a round trip fewer per cycle under load).

        Returns whether we hold the lease, the number of pending events, the age of the oldest in
        seconds (0 when none) and the batch.
        """
        claim = Step(CLAIM, {**self._lease, "want": want, "ttl": timedelta(seconds=self._ttl)})
        steps = [Step(MARK_PUBLISHED, {"ids": published})] if published else []
        steps.append(claim)
        if want:
            steps.append(Step(PENDING_BATCH, {**self._lease, "limit": limit}))
        results = await self.runner.run(steps, writes=True)
        results = results[1:] if published else results
        ((held, pending, oldest_age),) = results[0]
        batch = [PendingEvent(*row) for row in results[1]] if want else []
        return bool(held), int(pending), float(oldest_age or 0.0), batch

    async def mark_published(self, outbox_ids: list[int]) -> None:
        await self.runner.run([Step(MARK_PUBLISHED, {"ids": outbox_ids})], writes=True)

    async def release(self) -> None:
        await self.runner.run([Step(RELEASE, self._lease)], writes=True)


async def purge_published(runner: TransactionRunner, cutoff: datetime, batch_size: int) -> int:
    """Delete events published before ``cutoff``, ``batch_size`` per transaction; never a pending one."""
    deleted = 0
    while True:
        ((rows,)) = await runner.run([Step(PURGE_BATCH, {"cutoff": cutoff, "limit": batch_size})], writes=True)
        count = int(rows[0][0])
        deleted += count
        if count < batch_size:
            return deleted


PURGE_EVENTS_BATCH = 5000


async def purge_events_older_than(settings: Settings, older_than_hours: int) -> int:
    """Delete the events published over ``older_than_hours`` ago, ``PURGE_EVENTS_BATCH`` per transaction."""
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    engine = create_engine(settings, pool_size=1, pool_timeout=settings.db_pool_timeout)
    try:
        runner = TransactionRunner(engine, settings, pool_size=1, pool_timeout=settings.db_pool_timeout)
        return await purge_published(runner, cutoff, PURGE_EVENTS_BATCH)
    finally:
        await engine.dispose()
