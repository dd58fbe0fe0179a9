"""The CloudEvents ``sequence`` of an order's events orders them as strings, also across a power of ten.

Real PostgreSQL and RabbitMQ. The outbox ids are moved to 98 first, so that an order's placement
(98) and its cancellation (100) have different numbers of digits: unpadded, "98" > "100".
"""

from __future__ import annotations

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.amqp import event_queue, require_broker
from tests.support.relay import CANCELLED, PLACED, envelope, events_env, place_orders, running_relay


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


async def test_a_later_change_of_an_order_has_a_greater_sequence_as_a_string(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    catalog.add(1, stock=10)
    # Ids cross a power of ten only at timeline 10 (ids are timeline * 2^40 + n): for this test, the sequence alone.
    outbox = f"{catalog.orders_schema}.outbox"
    with catalog.engine.begin() as connection:
        default = connection.exec_driver_sql(
            "SELECT column_default FROM information_schema.columns"
            f" WHERE table_schema = '{catalog.orders_schema}' AND table_name = 'outbox' AND column_name = 'id'"
        ).scalar_one()
        connection.exec_driver_sql(f"ALTER TABLE {outbox} ALTER COLUMN id SET DEFAULT nextval('{outbox}_ids')")
        connection.exec_driver_sql(f"ALTER SEQUENCE {outbox}_ids RESTART WITH 98")
    try:
        first, _second = await place_orders(client, 2)  # outbox ids 98 and 99
        cancelled = await client.post(f"/orders/{first}/cancel", headers={"X-User": "r"})  # outbox id 100
    finally:
        with catalog.engine.begin() as connection:
            connection.exec_driver_sql(f"ALTER TABLE {outbox} ALTER COLUMN id SET DEFAULT {default}")
    assert cancelled.status_code == 200
    async with event_queue(broker_url) as queue, running_relay(events_env(settings, broker_url, queue.exchange)):
        await queue.wait_for(lambda received: len(received) >= 3, 30, "three events")
    events = {(int(envelope(m).subject), m.routing_key): envelope(m).sequence for m in queue.received}
    placed, cancel = events[(first, PLACED)], events[(first, CANCELLED)]
    assert (placed, cancel) == ("0" * 18 + "98", "0" * 17 + "100")
    assert placed < cancel
    assert all(len(sequence) == 20 and sequence.isdigit() for sequence in events.values())
