"""The events tests' side of the relay: settings, a relay run in the test's process, the outbox's state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import msgspec
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from orders_service.config import Settings
from orders_service.events.relay import Relay
from orders_service.observability.metrics import PUBLISH_FAILURE_REASONS
from tests.conftest import Catalog
from tests.support.amqp import Received

PLACED, CANCELLED = "orders.order.placed", "orders.order.cancelled"


class Envelope(msgspec.Struct):
    """A received CloudEvent, ``data`` kept as the exact bytes sent."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: str
    datacontenttype: str
    sequence: str
    data: msgspec.Raw


def envelope(message: Received) -> Envelope:
    return msgspec.json.decode(message.body, type=Envelope)


def events_env(settings: Settings, url: str, exchange: str, **overrides: str) -> Settings:
    return Settings.from_env(
        {**settings.as_env(), "AMQP_URL": url, "EVENTS_EXCHANGE": exchange, "DB_POOL_TIMEOUT": "30", **overrides}
    )


def outbox_rows(catalog: Catalog) -> list[tuple[int, str, bool]]:
    """(order id, type, published) of every outbox row, in id order."""
    with catalog.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"SELECT order_id, type, published_at IS NOT NULL FROM {catalog.orders_schema}.outbox ORDER BY id"
        ).fetchall()
    return [(int(order_id), str(kind), bool(published)) for order_id, kind, published in rows]


def pending(catalog: Catalog) -> int:
    return catalog.scalar("SELECT count(*) FROM {orders}.outbox WHERE published_at IS NULL")


def publish_failures(*reasons: str) -> float:
    """orders_events_publish_failures_total of this process (where the relay under test runs), for ``reasons``
    (all when none)."""
    return sum(
        REGISTRY.get_sample_value("orders_events_publish_failures_total", {"reason": reason}) or 0.0
        for reason in reasons or PUBLISH_FAILURE_REASONS
    )


@contextlib.asynccontextmanager
async def running_relay(settings: Settings) -> AsyncIterator[Relay]:
    relay = Relay(settings)
    running = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(running, 30)


async def place_orders(client: AsyncTestClient[Litestar], count: int) -> list[int]:
    ids = []
    for _ in range(count):
        placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "r"})
        assert placed.status_code == 200, placed.text
        ids.append(int(placed.json()["id"]))
    return ids


def placed_subjects(received: list[Received]) -> set[int]:
    return {int(envelope(message).subject) for message in received if message.routing_key == PLACED}
