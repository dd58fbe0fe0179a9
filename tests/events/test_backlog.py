"""A large backlog (300,000 pending events, e.g. after a long broker outage) drains, and is reported cheaply.

Real PostgreSQL and RabbitMQ, the relay in the test's process. The claim reads the head of
``ix_outbox_due`` only and counts at most ``PENDING_COUNT_LIMIT`` rows, so every cycle costs the
same however long the backlog: draining it is linear.
"""

from __future__ import annotations

import time

import aio_pika
import pytest
from sqlalchemy import text

from orders_service.config import Settings
from orders_service.events.outbox import PENDING_COUNT_LIMIT
from orders_service.events.relay import Relay
from tests.conftest import Catalog
from tests.support.amqp import event_queue, require_broker
from tests.support.faults import wait_until
from tests.support.relay import events_env, pending, running_relay

BACKLOG = 300_000


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


def write_backlog(catalog: Catalog, count: int) -> None:
    """``count`` placed orders of one item each, with their pending events, written at once."""
    orders = catalog.orders_schema
    with catalog.engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {orders}.orders (user_id, total_cents) SELECT 'backlog', 100 FROM generate_series(1, :n)"
            ),
            {"n": count},
        )
        connection.execute(
            text(
                f"INSERT INTO {orders}.order_items (order_id, product_id, qty, price_cents) "
                f"SELECT id, 1, 1, 100 FROM {orders}.orders"
            )
        )
        connection.execute(
            text(f"INSERT INTO {orders}.outbox (order_id, type) SELECT id, 'orders.order.placed' FROM {orders}.orders")
        )
    with catalog.engine.connect() as connection:
        connection.execute(text(f"ANALYZE {orders}.outbox"))


def drained(catalog: Catalog) -> bool:
    """No pending event (one look at ``ix_outbox_due``: polling a count of 300,000 rows would load the database)."""
    return (
        catalog.scalar("SELECT count(*) FROM (SELECT 1 FROM {orders}.outbox WHERE published_at IS NULL LIMIT 1) x") == 0
    )


async def queued(url: str, queue_name: str) -> int:
    connection = await aio_pika.connect(url, timeout=10)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, durable=True, passive=True)
        count = queue.declaration_result.message_count
        return int(count) if count is not None else 0


async def test_300k_pending_events_are_reported_by_estimate_and_drained(
    settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    catalog.add(1, stock=10)
    write_backlog(catalog, BACKLOG)
    async with event_queue(broker_url) as queue:
        relay_settings = events_env(settings, broker_url, queue.exchange)
        observer = Relay(relay_settings, holder="observer")
        try:
            seen = await observer.outbox.claim(want=False, limit=1)
        finally:
            await observer.outbox.runner.engine.dispose()
        assert seen.pending > PENDING_COUNT_LIMIT
        assert abs(seen.pending - BACKLOG) < BACKLOG * 0.1  # the planner's estimate, after ANALYZE
        assert seen.oldest_age >= 0
        started = time.monotonic()
        async with running_relay(relay_settings):
            await wait_until(lambda: drained(catalog), 600, "the backlog drained")
        drained_in = time.monotonic() - started
        await wait_until_queued(broker_url, queue.name, BACKLOG)
    assert pending(catalog) == 0
    print(f"\n[backlog] {BACKLOG} events drained in {drained_in:.1f} s ({BACKLOG / drained_in:.0f} events/s)")


async def wait_until_queued(url: str, queue_name: str, count: int) -> None:
    deadline = time.monotonic() + 60
    while (have := await queued(url, queue_name)) < count:
        assert time.monotonic() < deadline, f"{have} of {count} messages in the queue"
    assert have == count
