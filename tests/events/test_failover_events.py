"""Events across a failover to an asynchronous standby that lags ~200 ms (a delayed replication link).

The primary crashes under load (32 clients, orders of 1-3 products with an Idempotency-Key, retrying 503s), the
standby is promoted and the name moved to it; a new standby then joins the promoted primary. A failover to an
asynchronous standby loses the old primary's last commits: acknowledged orders are lost (counted, expected). What
must never happen: an event for an order the promoted database does not have (a phantom), or an event whose order
id the promoted database gave to another order. With ``EVENTS_AWAIT_STANDBYS=1`` the relay publishes a batch only
once a standby has flushed it: no phantom. Without, phantoms are counted. In both, ids are never handed out twice
(migration 0005: the timeline is in every id), and every order of the promoted database gets its event.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from orders_service.config import Settings
from tests.support.amqp import EventQueue, event_queue, require_broker
from tests.support.database import ProvisionedDatabase
from tests.support.faults import OrderLoad, until_acknowledged, wait_until
from tests.support.granian import start_granian
from tests.support.relay import PLACED, envelope, events_env
from tests.support.replication import Node, ReplicatedPostgres, replicated_postgres
from tests.support.scrape import scrape

PRODUCTS = list(range(1, 21))
INITIAL_STOCK = 1_000_000
LINK_DELAY_MS = 200


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


@pytest.fixture
def pair() -> Iterator[ReplicatedPostgres]:
    with replicated_postgres(synchronous=False, link_delay_ms=LINK_DELAY_MS) as pair:
        yield pair


@pytest.fixture
def stocked(pair: ReplicatedPostgres) -> Iterator[ProvisionedDatabase]:
    with pair.provisioned() as database:
        pair.add_products(database, PRODUCTS, INITIAL_STOCK)
        with pair.primary.connect(database.admin.db_name) as connection:
            # The DBA's part of print-grants with EVENTS_AWAIT_STANDBYS: the standbys' positions.
            connection.execute(f"GRANT pg_read_all_stats TO {database.runtime.db_user}")
        yield database


@pytest.fixture
async def queue(broker_url: str) -> AsyncIterator[EventQueue]:
    async with event_queue(broker_url) as queue:
        yield queue


def orders_on(node: Node, database: ProvisionedDatabase) -> dict[int, dict[str, Any]]:
    """Every order on ``node``: id -> user, total, creation time, items {product: qty}."""
    schema = database.admin.db_schema
    with node.connect(database.admin.db_name) as connection:
        rows = connection.execute(
            f"SELECT o.id, o.user_id, o.total_cents, o.created_at,"
            f" (SELECT json_object_agg(i.product_id, i.qty) FROM {schema}.order_items AS i WHERE i.order_id = o.id)"
            f" FROM {schema}.orders AS o"
        ).fetchall()
    return {
        int(order_id): {"user_id": user, "total_cents": int(total), "created_at": created, "items": items or {}}
        for order_id, user, total, created, items in rows
    }


def same_order(event_data: dict[str, Any], stored: dict[str, Any]) -> bool:
    created = datetime.fromisoformat(event_data["created_at"].replace("Z", "+00:00"))
    items = {str(item["product_id"]): item["qty"] for item in event_data["items"]}
    return (
        event_data["user_id"] == stored["user_id"]
        and event_data["total_cents"] == stored["total_cents"]
        and created == stored["created_at"]
        and items == {str(product): qty for product, qty in stored["items"].items()}
    )


def stock_is_exact(node: Node, database: ProvisionedDatabase) -> bool:
    """Each product's stock is its initial stock less the units of the placed (not cancelled) orders."""
    admin = database.admin
    with node.connect(admin.db_name) as connection:
        wrong = connection.execute(
            f"SELECT count(*) FROM {admin.catalog_schema}.products AS p WHERE p.stock <> %s - coalesce(("
            f" SELECT sum(i.qty) FROM {admin.db_schema}.order_items AS i JOIN {admin.db_schema}.orders AS o"
            f" ON o.id = i.order_id WHERE i.product_id = p.id AND o.status = 'placed'), 0)",
            [INITIAL_STOCK],
        ).fetchone()
    return wrong is not None and wrong[0] == 0


def pending_events(node: Node, database: ProvisionedDatabase) -> int:
    with node.connect(database.admin.db_name) as connection:
        row = connection.execute(
            f"SELECT count(*) FROM {database.admin.db_schema}.outbox WHERE published_at IS NULL"
        ).fetchone()
    return int(row[0]) if row else -1


@pytest.mark.parametrize("await_standbys", [1, 0], ids=["relay-awaits-the-standby", "relay-does-not-wait"])
async def test_no_event_describes_an_order_the_failover_lost(
    await_standbys: int,
    *,
    pair: ReplicatedPostgres,
    stocked: ProvisionedDatabase,
    queue: EventQueue,
    broker_url: str,
    tmp_path: Path,
) -> None:
    settings = events_env(
        Settings.from_env({**stocked.runtime.as_env(), "DB_STATEMENT_TIMEOUT_MS": "3000"}),
        broker_url,
        queue.exchange,
        EVENTS_AWAIT_STANDBYS=str(await_standbys),
    )
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with start_granian(settings, workers=2, metrics_dir=metrics_dir) as server:
        load = OrderLoad(server.base_url, clients=32, product_ids=PRODUCTS)
        load.start()
        try:
            await until_acknowledged(load, 400)
            crashed = time.monotonic()
            await asyncio.to_thread(pair.kill_primary)
            await asyncio.to_thread(pair.promote)
            pair.move_name(pair.standby, cut=True)
            promoted = time.monotonic()
            await until_acknowledged(load, 200)
            new_standby = await asyncio.to_thread(pair.add_standby)  # events flow again once a standby has them
            await until_acknowledged(load, 100)
        finally:
            report = await load.stop()
        await wait_until(lambda: pending_events(pair.standby, stocked) == 0, 60, "every event published")
        waits = {
            dict(labels).get("le"): value
            for (name, labels), value in scrape(server).items()
            if name == "orders_events_standby_wait_seconds_bucket"
        }
    await queue.wait_for(lambda received: len(received) > 0, 30, "events")
    await queue.drain()
    del new_standby

    survivors = orders_on(pair.standby, stocked)
    placed_events = [envelope(message) for message in queue.received if message.routing_key == PLACED]
    phantoms = [event for event in placed_events if int(event.subject) not in survivors]
    reused = [
        event
        for event in placed_events
        if int(event.subject) in survivors
        and not same_order(json.loads(bytes(event.data)), survivors[int(event.subject)])
    ]
    acknowledged = {order["id"]: order for order in report.acknowledged.values()}
    lost = [order_id for order_id in acknowledged if order_id not in survivors]
    given_to_another = [
        order_id
        for order_id, order in acknowledged.items()
        if order_id in survivors and survivors[order_id]["user_id"] != order["user_id"]
    ]
    without_event = set(survivors) - {int(event.subject) for event in placed_events}
    print(
        f"\nEVENTS_AWAIT_STANDBYS={await_standbys}, standby {LINK_DELAY_MS} ms behind: {report.summary()};"
        f" crash to promotion {promoted - crashed:.2f} s; acknowledged orders lost {len(lost)} of"
        f" {len(acknowledged)}; placed events {len(placed_events)} (duplicates"
        f" {sum(n - 1 for n in Counter(e.subject for e in placed_events).values())}), phantoms {len(phantoms)},"
        f" ids reused {len(reused)}; standby waits (cumulative buckets) {waits}"
    )
    # Orders: 200 or 503, never an error. A lost order's cancellation is a 404: the order is gone (asynchronous).
    assert {status for _, _, status in report.order_answers} <= {200, 503}, report.summary()
    assert report.statuses[404] <= len(lost), report.summary()
    assert set(report.statuses) <= {200, 404, 503}, report.summary()
    assert stock_is_exact(pair.standby, stocked)
    assert reused == []
    assert given_to_another == []
    assert without_event == set()  # every order the promoted database has was announced
    if await_standbys:
        assert phantoms == []
