"""The relay is woken after commits, never from inside an order's transaction.

A NOTIFY in the order's transaction makes PostgreSQL serialise the commits of every notifying
transaction; the service sends at most one NOTIFY per worker and ``EVENTS_NOTIFY_INTERVAL_MS``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import msgspec
import psycopg
import pytest
from psycopg import sql

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase
from tests.support.granian import GranianServer, start_granian

ORDERS = 200
PRODUCTS = (1, 2, 3, 4)
WORKERS = 2
INTERVAL_MS = 500  # long, so that a NOTIFY per commit could not hide among the debounced ones


@pytest.fixture
def service(settings: Settings, catalog: Catalog, tmp_path: Path) -> Iterator[GranianServer]:
    for product_id in PRODUCTS:
        catalog.add(product_id, stock=10_000)
    # A relay run apart listens for the NOTIFYs (AMQP_URL unset here: none in the workers).
    slow_wake_up = msgspec.structs.replace(settings, events_notify_interval_ms=INTERVAL_MS, events_relay_in_serve=False)
    with start_granian(slow_wake_up, workers=WORKERS, metrics_dir=tmp_path / "metrics") as server:
        yield server


async def test_orders_wake_the_relay_with_far_fewer_notifies_than_commits(
    service: GranianServer, database: ProvisionedDatabase, settings: Settings, catalog: Catalog
) -> None:
    async with await psycopg.AsyncConnection.connect(database.admin.conninfo, autocommit=True) as listener:
        await listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(settings.outbox_channel)))
        limits = httpx.Limits(max_connections=50)
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=service.base_url, timeout=60, limits=limits) as client:
            shapes = [[1], [2, 3], [4, 1, 2], [3]]
            responses = await asyncio.gather(
                *(
                    client.post(
                        "/orders",
                        json={"items": [{"product_id": p, "qty": 1} for p in shapes[n % len(shapes)]]},
                        headers={"X-User": f"buyer-{n % 13}"},
                    )
                    for n in range(ORDERS)
                )
            )
        elapsed = time.monotonic() - started
        assert [r.status_code for r in responses] == [200] * ORDERS
        # Every order committed before its answer; the wake-up after the last one follows within the interval.
        notifies = [n async for n in listener.notifies(timeout=2 * INTERVAL_MS / 1000)]

    assert catalog.order_count() == ORDERS
    assert catalog.scalar(f"SELECT count(*) FROM {catalog.orders_schema}.outbox") == ORDERS
    most = WORKERS * (int(elapsed * 1000 / INTERVAL_MS) + 2)
    print(f"\n[wake-up] {ORDERS} orders committed in {elapsed:.2f} s, {len(notifies)} NOTIFYs (at most {most})")
    assert 1 <= len(notifies) <= most < ORDERS
