"""What readiness checks: the database answers and holds every table and column the service uses."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, case, exists, false, func, literal_column, select

from orders_service.db.models import IdempotencyKey, Order, OrderItem, OutboxEvent, Product, UserWrite
from orders_service.db.statements import Statement, Step
from orders_service.db.timeline import CURRENT_TIMELINE
from orders_service.db.unavailable import DatabaseUnavailable

if TYPE_CHECKING:
    from orders_service.db.transactions import TransactionRunner

_orders, _items, _keys, _outbox, _writes, _products = (
    cast("Table", model.__table__) for model in (Order, OrderItem, IdempotencyKey, OutboxEvent, UserWrite, Product)
)

# Fails with the missing table, column or privilege, which is what readiness reports; reads no row. Every
# column the models map: a replica of a newer release is not ready until its migrations are applied.
_EVERY_COLUMN = (
    select(
        _products.c.id,
        _products.c.price_cents,
        _products.c.stock,
        *_orders.c,
        *_items.c,
        *_keys.c,
        *_outbox.c,
        *_writes.c,
    )
    .select_from(
        _products.join(_orders, false())
        .join(_items, false())
        .join(_keys, false())
        .join(_outbox, false())
        .join(_writes, false())
    )
    .limit(0)
)
# And whether the server takes writes: a standby answers SELECTs but refuses every order (SQLSTATE 25006).
READINESS_CHECK = Statement(
    "readiness_check",
    select(
        func.pg_is_in_recovery(),
        func.current_setting("transaction_read_only") == "on",
        exists(_EVERY_COLUMN),
        case((~func.pg_is_in_recovery(), literal_column(CURRENT_TIMELINE))),
    ),
)


async def check_tables(runner: TransactionRunner) -> int:
    """Raise DatabaseUnavailable unless the database answers, takes writes and every table the service uses is
    there; return the server's timeline (``db/timeline.py``).

    A connection that broke while in use (a failover, a PgBouncer restart, terminated backends)
    says the old session is gone, not that the database is: the check runs once more, on the new
    connection the pool opens in its place, within the same budget. Without this, every
    instance's readiness failed at once as the database came back.
    """
    steps = [Step(READINESS_CHECK, {})]
    deadline = runner.deadline()
    try:
        ((row,),) = await runner.run(steps, writes=False, deadline=deadline)
    except DatabaseUnavailable as lost:
        if not lost.connection_lost:
            raise
        ((row,),) = await runner.run(steps, writes=False, deadline=deadline)
    in_recovery, read_only, _, timeline = row
    if in_recovery or read_only:
        why = "the server is a standby (in recovery)" if in_recovery else "transactions are read-only on the server"
        raise DatabaseUnavailable("read_only", connection_lost=True, context=why)
    return int(timeline)
