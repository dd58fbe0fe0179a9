"""A relay that lost its lease publishes and marks nothing: the lease fences both.

Real PostgreSQL and RabbitMQ. A relay stalls between its claim and its publish (injected: its claim
returns only after the lease ran out, as a frozen process or a long pause would) while another
takes over and publishes: when it resumes it must not send its stale batch, or a consumer that
keeps the latest state would see an order go back from cancelled to placed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from orders_service.config import Settings
from orders_service.events.outbox import Claim
from orders_service.events.relay import BROKER_UNREACHABLE, PUBLISHING, STANDBY, Relay
from tests.conftest import Catalog
from tests.support.amqp import event_queue, require_broker
from tests.support.faults import wait_until
from tests.support.relay import (
    CANCELLED,
    PLACED,
    envelope,
    events_env,
    outbox_rows,
    pending,
    place_orders,
    publish_failures,
)

LEASE_MS = 1000


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


def stall_after_first_batch(relay: Relay, resume: asyncio.Event) -> asyncio.Event:
    """Make ``relay``'s first claim that returns events wait for ``resume`` before returning; the returned event
    is set once it stalls."""
    stalled = asyncio.Event()
    claim = relay.outbox.claim

    async def stalling_claim(**kwargs: object) -> Claim:
        result = await claim(**kwargs)  # type: ignore[arg-type]
        if result.batch and not stalled.is_set():
            stalled.set()
            await resume.wait()
        return result

    relay.outbox.claim = stalling_claim  # type: ignore[method-assign]
    return stalled


async def test_a_relay_stalled_past_its_lease_publishes_nothing_when_it_resumes(
    client: AsyncTestClient[Litestar],
    settings: Settings,
    catalog: Catalog,
    broker_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """It checks the lease before publishing: it neither sends (a consumer would see an order go back from
    cancelled to placed) nor blames the broker (no "broker unreachable", no timeout counted, its connection kept:
    publish_batch's own last-moment check would have refused the batch as a timeout)."""
    catalog.add(1, stock=10)
    order_ids = await place_orders(client, 3)
    for order_id in order_ids:
        assert (await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "r"})).status_code == 200
    async with event_queue(broker_url) as queue:
        relay_settings = events_env(settings, broker_url, queue.exchange, EVENTS_LEASE_TTL_MS=str(LEASE_MS))
        stale, taking_over = Relay(relay_settings, holder="stale"), Relay(relay_settings, holder="taking-over")
        resume = asyncio.Event()
        stalled = stall_after_first_batch(stale, resume)
        runs = [asyncio.create_task(stale.run())]
        try:
            await asyncio.wait_for(stalled.wait(), 30)
            runs.append(asyncio.create_task(taking_over.run()))
            await wait_until(lambda: pending(catalog) == 0, 30, "the other relay publishing once the lease ran out")
            assert taking_over.state == PUBLISHING
            failures_before = publish_failures()
            caplog.clear()
            resume.set()  # the stale relay wakes with a batch claimed under a lease that is gone
            await wait_until(lambda: stale.state == STANDBY, 30, "the stale relay standing by")
            assert publish_failures() == failures_before
            assert not [r for r in caplog.records if BROKER_UNREACHABLE in r.getMessage()]
            assert any("too little of its lease left" in r.getMessage() for r in caplog.records)
            # Both relays keep running: a copy the stale one sent now would be in the queue before this one.
            marker = await place_orders(client, 1)
            await queue.wait_for(
                lambda received: any(int(envelope(m).subject) == marker[0] for m in received), 30, "the marker"
            )
        finally:
            for relay in (stale, taking_over):
                relay.stop()
            await asyncio.wait_for(asyncio.gather(*runs), 30)
    received = [(int(envelope(m).subject), m.routing_key) for m in queue.received]
    expected = [*((order_id, PLACED) for order_id in order_ids), *((order_id, CANCELLED) for order_id in order_ids)]
    assert received == [*expected, (marker[0], PLACED)]  # each once, in the outbox's order
    assert all(published for _, _, published in outbox_rows(catalog))


async def test_marks_and_deferrals_need_the_lease_still_held(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """What a relay settles after its lease lapsed (another may hold it now) changes nothing in the outbox."""
    catalog.add(1, stock=10)
    await place_orders(client, 2)
    relay = Relay(events_env(settings, broker_url, "orders-test-unused"), holder="lapsed")
    try:
        claim = await relay.outbox.claim(want=True, limit=10)
        assert claim.held
        ids = [event.outbox_id for event in claim.batch]
        with catalog.engine.begin() as connection:
            connection.execute(
                text(f"UPDATE {catalog.orders_schema}.outbox_relay_lease SET expires_at = now() - :ago"),
                {"ago": timedelta(seconds=1)},
            )
        await relay.outbox.settle(ids[:1], ids[1:])
        assert pending(catalog) == 2
        assert catalog.scalar("SELECT max(attempts) FROM {orders}.outbox") == 0
        renewed = await relay.outbox.claim(want=True, limit=10)  # nobody took it meanwhile: ours again
        assert renewed.held
        await relay.outbox.settle(ids[:1], ids[1:])
        assert pending(catalog) == 1
        assert catalog.scalar("SELECT max(attempts) FROM {orders}.outbox") == 1
    finally:
        await relay.outbox.runner.engine.dispose()
