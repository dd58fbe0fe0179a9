"""The relay's SQL: the lease, the pending events with their orders, marking them published, purging.

Every statement is a short transaction of its own (or two in one pipeline): nothing is held across
transactions, so the relay works through PgBouncer in transaction mode like the request path.
"""

from __future__ import annotations

from dataclasses import dataclass
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
    case,
    column,
    delete,
    exists,
    extract,
    func,
    literal_column,
    or_,
    select,
    table,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert

from orders_service.config import Settings
from orders_service.db.engine import create_engine
from orders_service.db.models import Order, OutboxEvent, RelayLease
from orders_service.db.statements import Statement, Step, TextStatement
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
_pg_class = table("pg_class", column("oid"), column("reltuples"), schema="pg_catalog")


PENDING_COUNT_LIMIT = 1000  # counted exactly up to here; beyond it, the planner's estimate
RETRY_BASE_SECONDS = 0.5
RETRY_MAX_SECONDS = 60.0
# 0.5 s x 2^7 = 64 s is past the cap: the exponent stops there. Uncapped, power(2, attempts) in double
# precision overflows at 1,024 attempts (17 hours of an event no queue takes), failing every claim.
RETRY_MAX_DOUBLINGS = 7

_held_now = exists(
    select(_lease.c.name).where(_lease.c.name == _name, _lease.c.holder == _holder, _lease.c.expires_at > func.now())
)
"""Whether this relay holds the lease as of the transaction's start: what publishing and marking are fenced by."""

_due_order = (_outbox.c.next_attempt_at, _outbox.c.id)  # the order of ix_outbox_due


def _build_claim() -> Any:
    """Take or renew the lease when ``want``; in any case report whether we hold it, for how long, and the backlog.

    The upsert takes the lease when it is free or expired and renews it when it is ours; its time
    is the database's, the one clock every relay shares. The backlog costs the same at 10 or
    300,000 pending events: a count that stops at ``PENDING_COUNT_LIMIT`` rows of ``ix_outbox_due``
    (beyond it, the index's row estimate from the last ANALYZE), and the first due event's age.
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
        .returning(_lease.c.holder, _lease.c.expires_at)
        .cte("claimed")
    )
    limit = bindparam("count_limit", type_=Integer)
    counted = (
        select(func.count())
        .select_from(select(_outbox.c.id).where(_pending).order_by(*_due_order).limit(limit).subquery())
        .scalar_subquery()
    )
    estimated = (
        select(func.greatest(func.cast(_pg_class.c.reltuples, BigInteger), 0))
        .where(_pg_class.c.oid == func.to_regclass(bindparam("due_index", type_=String)))
        .scalar_subquery()
    )
    first_due = select(_outbox.c.occurred_at).where(_pending).order_by(*_due_order).limit(1).scalar_subquery()
    # Events the broker refused and that are not published yet: new events wait from -infinity, a refused one
    # from the end of its back-off (one probe of ix_outbox_due past its head).
    deferred = exists(select(_outbox.c.id).where(_pending, _outbox.c.next_attempt_at > literal_column("'-infinity'")))
    return select(
        exists(select(claimed.c.holder)).label("held"),
        select(extract("epoch", claimed.c.expires_at - func.now())).scalar_subquery().label("lease_left"),
        case((counted < limit, counted), else_=func.greatest(counted, func.coalesce(estimated, 0))).label("pending"),
        extract("epoch", func.now() - first_due).label("oldest_age"),
        deferred.label("deferred"),
    )


def _build_pending_batch() -> Any:
    """The first due pending events with their orders: new ones in id order, then retried ones whose back-off
    has passed; nothing unless we hold the lease.

    Run after ``CLAIM`` in the same transaction, so it sees the lease as the claim left it. A
    bounded look at the head of ``ix_outbox_due``: its cost does not grow with the backlog.
    """
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
        .where(_pending, _outbox.c.next_attempt_at <= func.now(), _held_now)
        .order_by(*_due_order)
        .limit(bindparam("limit", type_=Integer))
    )


_ids = _outbox.c.id == func.any(bindparam("ids", type_=ARRAY(BigInteger)))
# For the statements after it in the claim's transaction. With stale statistics (a backlog written
# faster than autovacuum analyzes it) the batch's plan looked costly enough for PostgreSQL to compile
# it with LLVM: 214 ms of JIT for a statement that runs in 2 (measured, 300,000 pending).
JIT_OFF = Statement("relay_jit_off", select(func.set_config("jit", "off", True)))
CLAIM = Statement("claim_outbox_lease", _build_claim())
PENDING_BATCH = Statement("pending_events", _build_pending_batch())
# Fenced: only a relay that still holds the lease marks (or defers) what it published (or tried);
# one whose lease lapsed leaves them to the holder, which publishes them again.
MARK_PUBLISHED = Statement(
    "mark_events_published",
    update(_outbox).where(_ids, _pending, _held_now).values(published_at=func.now()),
)
DEFER = Statement(
    "defer_events",
    update(_outbox)
    .where(_ids, _pending, _held_now)
    .values(
        attempts=_outbox.c.attempts + 1,
        next_attempt_at=func.now()
        + func.make_interval(
            0,
            0,
            0,
            0,
            0,
            0,
            func.least(
                RETRY_MAX_SECONDS,
                RETRY_BASE_SECONDS * func.power(2, func.least(_outbox.c.attempts, RETRY_MAX_DOUBLINGS)),
            ),
        ),
    ),
)
# Where the WAL ends as the events are claimed: their commits are all before it.
WAL_POSITION = TextStatement("outbox_wal_position", "SELECT pg_current_wal_insert_lsn()::text")
# Standbys that have flushed the WAL up to ``lsn``; their positions read NULL without pg_read_all_stats (counted
# apart, to say so).
STANDBYS_FLUSHED = TextStatement(
    "standbys_flushed",
    "SELECT count(*) FILTER (WHERE flush_lsn >= %(lsn)s::pg_lsn), count(*) FILTER (WHERE flush_lsn IS NULL)"
    " FROM pg_catalog.pg_stat_replication WHERE state = 'streaming'",
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


@dataclass(frozen=True, slots=True)
class Claim:
    held: bool  # this relay holds the lease
    lease_left: float  # seconds the lease still runs, by the database's clock (0 when not held)
    pending: int  # events not yet published: exact up to PENDING_COUNT_LIMIT, estimated beyond
    oldest_age: float  # seconds since the first due event occurred (0 when none is pending)
    deferred: bool  # some events the broker refused are not published yet
    batch: list[PendingEvent]
    wal_position: str | None = None  # the WAL's end as they were claimed (when standbys must flush them first)


class Outbox:
    """The relay's access to the outbox, through a TransactionRunner of its own (never the request pool)."""

    def __init__(self, runner: TransactionRunner, holder: str, *, schema: str, lease_ttl_seconds: float) -> None:
        self.runner = runner
        self.holder = holder
        self._lease = {"lease_name": LEASE_NAME, "holder": holder}
        self._ttl = lease_ttl_seconds
        self._backlog = {"count_limit": PENDING_COUNT_LIMIT, "due_index": f"{schema}.ix_outbox_due"}

    async def claim(
        self,
        *,
        want: bool,
        limit: int,
        published: list[int] | None = None,
        refused: list[int] | None = None,
        wal_position: bool = False,
    ) -> Claim:
        """Take or renew the lease (when ``want``) and read up to ``limit`` due pending events if we hold it.

        ``published``: events the broker confirmed since the last cycle, marked first in the same
        transaction (a round trip fewer per cycle under load); ``refused``: events it nacked or
        could not route, tried again after a back-off. Both only while we still hold the lease.
        """
        steps = [Step(JIT_OFF, {}), *self._settle_steps(published or [], refused or [])]
        settled = len(steps)
        steps.append(Step(CLAIM, {**self._lease, **self._backlog, "want": want, "ttl": timedelta(seconds=self._ttl)}))
        if want:
            steps.append(Step(PENDING_BATCH, {**self._lease, "limit": limit}))
            if wal_position:
                steps.append(Step(WAL_POSITION, {}))
        results = (await self.runner.run(steps, writes=True))[settled:]
        ((held, lease_left, pending, oldest_age, deferred),) = results[0]
        batch = [PendingEvent(*row) for row in results[1]] if want else []
        position = results[2][0][0] if want and wal_position else None
        return Claim(
            bool(held), float(lease_left or 0.0), int(pending), float(oldest_age or 0.0), deferred, batch, position
        )

    async def standbys_flushed(self, wal_position: str) -> tuple[int, int]:
        """How many streaming standbys have flushed the WAL up to ``wal_position``, and how many hide their
        position (the role lacks pg_read_all_stats)."""
        ((row,),) = await self.runner.run([Step(STANDBYS_FLUSHED, {"lsn": wal_position})], writes=False)
        return int(row[0]), int(row[1])

    async def settle(self, published: list[int], refused: list[int]) -> None:
        """Mark ``published`` and defer ``refused`` (see ``claim``), alone."""
        if published or refused:
            await self.runner.run(self._settle_steps(published, refused), writes=True)

    def _settle_steps(self, published: list[int], refused: list[int]) -> list[Step]:
        steps = [Step(MARK_PUBLISHED, {**self._lease, "ids": published})] if published else []
        if refused:
            steps.append(Step(DEFER, {**self._lease, "ids": refused}))
        return steps

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
