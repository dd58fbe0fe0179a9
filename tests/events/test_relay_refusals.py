"""Events the broker refuses, one by one: none is dropped, the others go on, the broker is not "unreachable".

Real PostgreSQL and RabbitMQ, the relay in the test's process. A refused event (returned: no queue
bound for its type; nacked: a full ``reject-publish`` queue) stays pending and is tried again
after a back-off that doubles per attempt; what the broker confirmed in the same batch is marked.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from orders_service.config import Settings
from orders_service.events import amqp_publish
from orders_service.events.relay import BROKER_UNREACHABLE, FAILING, PUBLISHING, REFUSED, Relay
from tests.conftest import Catalog
from tests.support.amqp import (
    EventQueue,
    Received,
    close_connection_named,
    event_queue,
    refusing_queue,
    require_broker,
)
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
    running_relay,
)


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


def attempts(catalog: Catalog) -> dict[int, int]:
    """The attempts of every pending event, by outbox id."""
    with catalog.engine.connect() as connection:
        rows = connection.exec_driver_sql(
            f"SELECT id, attempts FROM {catalog.orders_schema}.outbox WHERE published_at IS NULL"
        ).fetchall()
    return {int(outbox_id): int(tries) for outbox_id, tries in rows}


def states_of(relay: Relay, seen: set[str]) -> bool:
    """Record the relay's state (called from ``wait_until``'s polls); never ends the wait by itself."""
    seen.add(relay.state)
    return False


async def cancel(client: AsyncTestClient[Litestar], order_ids: list[int]) -> None:
    for order_id in order_ids:
        response = await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "r"})
        assert response.status_code == 200, response.text


async def test_events_no_queue_takes_stay_pending_are_counted_and_arrive_once_a_queue_is_bound(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """No queue bound (a consumer deployed a day later): every event comes back, nothing is marked; bound,
    they arrive, each with its sequence and AMQP timestamp."""
    catalog.add(1, stock=10)
    order_ids = await place_orders(client, 3)
    await cancel(client, order_ids[:1])
    exchange = f"orders-test-{uuid.uuid4().hex[:10]}"
    unroutable_before = publish_failures("unroutable")
    seen: set[str] = set()
    async with running_relay(events_env(settings, broker_url, exchange)) as relay:
        await wait_until(
            lambda: states_of(relay, seen) or min(attempts(catalog).values(), default=0) >= 2,
            30,
            "every event tried twice",
        )
        assert pending(catalog) == 4
        assert publish_failures("unroutable") - unroutable_before >= 8
        assert relay.state == REFUSED
        queue = EventQueue(broker_url, exchange)
        await queue.declare()
        try:
            await wait_until(lambda: pending(catalog) == 0, 90, "the events published once a queue is bound")
            await queue.wait_for(lambda received: len(received) >= 4, 30, "every event")
            await wait_until(lambda: relay.state == PUBLISHING, 30, "the relay saying it publishes again")
        finally:
            await queue.delete()
    assert BROKER_UNREACHABLE not in seen
    assert [(int(envelope(m).subject), m.routing_key) for m in queue.received] == [
        *((order_id, PLACED) for order_id in order_ids),
        (order_ids[0], CANCELLED),
    ]
    assert_sequenced(queue.received)


def assert_sequenced(received: list[Received]) -> None:
    """Per order, a later change has a greater ``sequence`` (as strings); every message has an AMQP timestamp."""
    by_order: dict[str, list[tuple[str, str]]] = {}
    for message in received:
        event = envelope(message)
        by_order.setdefault(event.subject, []).append((event.type, event.sequence))
        assert message.timestamp is not None
        assert abs((message.timestamp - datetime.now(UTC)).total_seconds()) < 300
    for changes in by_order.values():
        sequences = dict(changes)
        if CANCELLED in sequences:
            assert sequences[PLACED] < sequences[CANCELLED]


async def test_a_queue_refusing_one_type_leaves_the_other_type_flowing_once_each(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """A consumer's queue bound to ``cancelled`` only, full with ``reject-publish``: the broker nacks the
    cancelled events. The healthy queue gets every placed event exactly once (today's relay resent the whole
    batch every few seconds), the cancelled ones are retried with a growing back-off (a few copies in the
    healthy queue, bounded), and the relay never says the broker is unreachable."""
    catalog.add(1, stock=100)
    seen: set[str] = set()
    async with (
        event_queue(broker_url) as queue,
        refusing_queue(broker_url, queue.exchange, CANCELLED) as refusing,
        running_relay(events_env(settings, broker_url, queue.exchange)) as relay,
    ):
        nacked_before = publish_failures("nacked")
        order_ids = await place_orders(client, 6)
        await cancel(client, order_ids[:2])
        more = await place_orders(client, 6)  # after the refused ones, in the outbox's order
        await wait_until(
            lambda: states_of(relay, seen) or min(attempts(catalog).values(), default=0) >= 4,
            60,
            "the refused events tried four times",
        )
        tries = attempts(catalog)
        await queue.drain()
        placed_while_refused = [int(envelope(m).subject) for m in queue.received if m.routing_key == PLACED]
        copies_while_refused = sum(m.routing_key == CANCELLED for m in queue.received)
        nacked = publish_failures("nacked") - nacked_before
        await refusing.delete()
        await wait_until(lambda: pending(catalog) == 0, 90, "the refused events published once accepted")
        await queue.wait_for(
            lambda received: sum(m.routing_key == CANCELLED for m in received) >= copies_while_refused + 2, 30, "all"
        )
    assert BROKER_UNREACHABLE not in seen
    assert REFUSED in seen
    assert sorted(placed_while_refused) == sorted(order_ids + more)  # each placed event once, none held back
    assert len(tries) == 2
    assert all(4 <= count <= 8 for count in tries.values()), tries  # a back-off, not a resend every cycle
    assert copies_while_refused <= 2 * max(tries.values())
    assert nacked == sum(tries.values())
    assert outbox_rows(catalog) == [
        *((order_id, PLACED, True) for order_id in order_ids),
        *((order_id, CANCELLED, True) for order_id in order_ids[:2]),
        *((order_id, PLACED, True) for order_id in more),
    ]


async def test_a_broken_fast_path_is_visible_in_health_and_metrics_and_loses_nothing(
    client: AsyncTestClient[Litestar],
    settings: Settings,
    catalog: Catalog,
    broker_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``publish_batch`` relies on aiormq internals: one renamed in an upgrade (simulated) must show."""
    catalog.add(1, stock=10)
    order_ids = await place_orders(client, 2)
    renamed = AttributeError("'Channel' object has no attribute 'write_queue'")

    class Renamed:
        @staticmethod
        def marshall(**_: object) -> None:
            raise renamed

    async with event_queue(broker_url) as queue:
        unexpected_before = publish_failures("unexpected")
        monkeypatch.setattr(amqp_publish, "ChannelFrame", Renamed)
        async with running_relay(events_env(settings, broker_url, queue.exchange)) as relay:
            await wait_until(lambda: publish_failures("unexpected") >= unexpected_before + 2, 60, "two failures")
            await wait_until(lambda: relay.state == FAILING, 30, "the relay saying it fails")
            assert pending(catalog) == len(order_ids)
            monkeypatch.undo()
            await wait_until(lambda: pending(catalog) == 0, 60, "the events published once fixed")
        await queue.wait_for(lambda received: len(received) >= len(order_ids), 30, "every event")


async def test_the_back_off_doubles_from_half_a_second_to_a_minute_and_never_overflows(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """An event refused for a day has tried over a thousand times: 2^1024 overflows a double, and the statement
    that defers it must not fail (it did, inside every claim: the relay published nothing new for good)."""
    catalog.add(1, stock=100)
    order_ids = await place_orders(client, 9)
    prior_attempts = [0, 1, 2, 3, 6, 7, 8, 1023, 5000]
    expected = [0.5, 1, 2, 4, 32, 60, 60, 60, 60]
    with catalog.engine.begin() as connection:
        for order_id, tries in zip(order_ids, prior_attempts, strict=True):
            connection.exec_driver_sql(
                f"UPDATE {catalog.orders_schema}.outbox SET attempts = %s WHERE order_id = %s", (tries, order_id)
            )
    relay = Relay(events_env(settings, broker_url, "orders-test-unused"), holder="backing-off")
    try:
        claim = await relay.outbox.claim(want=True, limit=20)
        assert claim.held
        await relay.outbox.settle([], [event.outbox_id for event in claim.batch])
    finally:
        await relay.outbox.runner.engine.dispose()
    with catalog.engine.connect() as connection:
        rows: dict[int, float] = dict(
            connection.exec_driver_sql(
                f"SELECT order_id, extract(epoch FROM next_attempt_at - now()) FROM {catalog.orders_schema}.outbox"
            ).fetchall()
        )
    for order_id, seconds in zip(order_ids, expected, strict=True):
        assert abs(float(rows[order_id]) - seconds) < 1, (order_id, rows[order_id], seconds)
    assert catalog.scalar("SELECT max(attempts) FROM {orders}.outbox") == 5001


async def test_events_refused_for_a_while_keep_the_relay_refused_until_they_go_out(
    client: AsyncTestClient[Litestar],
    settings: Settings,
    catalog: Catalog,
    broker_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ten cancelled events a full queue refuses, while placed events flow: the relay says REFUSED from the first
    refusal until the last refused event is published (every state sampled meanwhile, between the attempts too),
    and logs it once, not once per attempt; then once that it publishes again."""
    catalog.add(1, stock=100)
    states: list[str] = []

    def sample(condition: bool) -> bool:
        states.append(relay.state)
        return condition

    async with (
        event_queue(broker_url) as queue,
        refusing_queue(broker_url, queue.exchange, CANCELLED) as refusing,
        running_relay(events_env(settings, broker_url, queue.exchange, EVENTS_POLL_INTERVAL_MS="50")) as relay,
    ):
        order_ids = await place_orders(client, 10)
        await wait_until(lambda: pending(catalog) == 0, 30, "the placed events out")
        caplog.clear()
        await cancel(client, order_ids)  # nacked: retried after a back-off
        await wait_until(lambda: relay.state == REFUSED, 30, "refused")
        await wait_until(lambda: sample(min(attempts(catalog).values(), default=0) >= 3), 60, "three attempts each")
        more = await place_orders(client, 3)  # others keep flowing meanwhile
        await wait_until(lambda: sample(pending(catalog) == len(order_ids)), 30, "the new placed events out")
        refused_meanwhile = list(states)
        await refusing.delete()
        await wait_until(lambda: pending(catalog) == 0, 90, "the refused events out once accepted")
        await wait_until(lambda: relay.state == PUBLISHING, 30, "publishing again")
    assert len(refused_meanwhile) > 10
    assert set(refused_meanwhile) == {REFUSED}, refused_meanwhile
    lines = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "orders_service.events.relay"]
    assert [level for level, message in lines if REFUSED in message] == ["WARNING"], lines
    assert [level for level, message in lines if message.endswith(f": {PUBLISHING}")] == ["INFO"], lines
    assert {order_id for order_id, _, published in outbox_rows(catalog) if published} >= set(more)


async def test_a_broker_that_closes_the_connection_while_the_relay_claims_is_unreachable_not_a_bug(
    client: AsyncTestClient[Litestar],
    settings: Settings,
    catalog: Catalog,
    broker_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The relay's claim waits (the lease row held by another session) while the broker closes its connection: the
    batch finds the channel gone. That is the broker being unreachable (one WARNING), never an unexpected error
    with a traceback; the events go out once it reconnects."""
    catalog.add(1, stock=10)
    async with event_queue(broker_url) as queue:
        relaying = events_env(settings, broker_url, queue.exchange, EVENTS_POLL_INTERVAL_MS="100")
        async with running_relay(relaying) as relay:
            await place_orders(client, 1)
            await wait_until(lambda: pending(catalog) == 0 and relay.state == PUBLISHING, 30, "publishing")
            unexpected_before = publish_failures("unexpected")
            caplog.clear()
            with catalog.engine.connect() as lease_holder:
                lease_holder.exec_driver_sql(f"SELECT 1 FROM {catalog.orders_schema}.outbox_relay_lease FOR UPDATE")
                await wait_until(lambda: waiting_for_a_lock(catalog), 30, "the relay's claim waiting")
                await place_orders(client, 2)
                await asyncio.to_thread(close_connection_named, relay.holder, "closed during a claim")
                lease_holder.rollback()
            await wait_until(lambda: pending(catalog) == 0, 60, "the events published after reconnecting")
        await queue.wait_for(lambda received: len(received) >= 3, 30, "three events")
    assert publish_failures("unexpected") == unexpected_before
    records = [r for r in caplog.records if r.name == "orders_service.events.relay"]
    assert not [r for r in records if r.levelno >= logging.ERROR], [r.getMessage() for r in records]
    assert any(BROKER_UNREACHABLE in r.getMessage() for r in records if r.levelname == "WARNING")


def waiting_for_a_lock(catalog: Catalog) -> bool:
    return (
        catalog.scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        )
        > 0
    )
