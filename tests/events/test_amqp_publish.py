"""``publish_batch``, the relay's fast path on aiormq's channel internals, against the real broker.

It writes a batch's frames at once through aiormq's bookkeeping (``amqp_publish.py`` says why and
what it costs). These tests pin what it must give per message whatever aiormq does inside:
confirmed, returned (no queue bound), nacked (a ``reject-publish`` queue), nothing written after
its deadline, and a channel closed under it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import aio_pika
import aiormq
import pytest
from aiormq import spec

from orders_service.events.amqp_publish import Outgoing, Unroutable, publish_batch
from tests.support.amqp import event_queue, refusing_queue, require_broker

PLACED, CANCELLED = "orders.order.placed", "orders.order.cancelled"


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


@pytest.fixture
async def channel(broker_url: str) -> AsyncIterator[aiormq.Channel]:
    connection = await aio_pika.connect(broker_url, timeout=10)
    async with connection:
        confirming = await connection.channel(publisher_confirms=True)
        yield cast("aiormq.Channel", await confirming.get_underlay_channel())


def messages(*routing_keys: str) -> list[Outgoing]:
    return [
        (key, f"message {n}".encode(), spec.Basic.Properties(message_id=uuid.uuid4().hex, delivery_mode=2))
        for n, key in enumerate(routing_keys)
    ]


def soon(seconds: float = 10) -> float:
    return asyncio.get_running_loop().time() + seconds


async def declare(channel: aiormq.Channel, exchange: str) -> None:
    await channel.exchange_declare(exchange, exchange_type="topic", durable=True)


async def test_every_message_of_a_batch_is_confirmed_and_delivered_in_order(
    channel: aiormq.Channel, broker_url: str
) -> None:
    async with event_queue(broker_url) as queue:
        batch = messages(*[PLACED, CANCELLED] * 250)
        outcomes = await publish_batch(channel, queue.exchange, batch, soon())
        await queue.wait_for(lambda received: len(received) >= len(batch), 30, "the batch")
    assert outcomes == [None] * len(batch)
    assert [message.body for message in queue.received] == [body for _, body, _ in batch]
    assert not channel.message_id_delivery_tag  # nothing left behind in aiormq's bookkeeping


async def test_messages_no_queue_takes_come_back_unroutable_and_the_others_are_confirmed(
    channel: aiormq.Channel, broker_url: str
) -> None:
    """A queue bound to ``placed`` only: the ``cancelled`` messages are returned (``mandatory``), not confirmed."""
    exchange = f"orders-test-{uuid.uuid4().hex[:10]}"
    await declare(channel, exchange)
    queue_name = f"orders-test-{uuid.uuid4().hex[:10]}"
    try:
        await channel.queue_declare(queue_name, durable=True)
        await channel.queue_bind(queue_name, exchange, routing_key=PLACED)
        outcomes = await publish_batch(channel, exchange, messages(PLACED, CANCELLED, PLACED, CANCELLED), soon())
    finally:
        await channel.queue_delete(queue_name)
        await channel.exchange_delete(exchange)
    assert [type(outcome) for outcome in outcomes] == [type(None), Unroutable, type(None), Unroutable]


async def test_a_queue_that_refuses_one_type_nacks_only_those_messages(
    channel: aiormq.Channel, broker_url: str
) -> None:
    """A full ``reject-publish`` queue bound to ``cancelled``: those are nacked; the healthy queue got every
    message (its copy was accepted: the nack is for the refusing queue's copy)."""
    async with event_queue(broker_url) as queue, refusing_queue(broker_url, queue.exchange, CANCELLED):
        batch = messages(PLACED, CANCELLED, PLACED)
        outcomes = await publish_batch(channel, queue.exchange, batch, soon())
        await queue.wait_for(lambda received: len(received) >= len(batch), 30, "the healthy queue's copies")
    assert outcomes[0] is None
    assert outcomes[2] is None
    assert isinstance(outcomes[1], aiormq.exceptions.DeliveryError)
    assert not isinstance(outcomes[1], Unroutable)


async def test_nothing_is_written_once_the_deadline_has_passed(channel: aiormq.Channel, broker_url: str) -> None:
    """The relay's fence: a relay that resumes after its lease ran out must not publish its stale batch."""
    async with event_queue(broker_url) as queue:
        outcomes = await publish_batch(channel, queue.exchange, messages(PLACED, PLACED), soon(-0.001))
        published = await publish_batch(channel, queue.exchange, messages(CANCELLED), soon())
        await queue.wait_for(lambda received: len(received) >= 1, 30, "the later message")
        await queue.drain()
    assert [type(outcome) for outcome in outcomes] == [TimeoutError, TimeoutError]
    assert published == [None]
    assert [message.routing_key for message in queue.received] == [CANCELLED]


async def test_a_channel_the_broker_closes_fails_each_unconfirmed_message(
    channel: aiormq.Channel, broker_url: str
) -> None:
    """Publishing to an exchange that does not exist: the broker closes the channel (404)."""
    outcomes = await publish_batch(channel, f"orders-test-missing-{uuid.uuid4().hex[:10]}", messages(PLACED), soon())
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], aiormq.exceptions.AMQPError | ConnectionError)
    assert not isinstance(outcomes[0], Unroutable | aiormq.exceptions.DeliveryError)


async def test_a_message_without_message_id_is_refused_before_anything_is_written(
    channel: aiormq.Channel, broker_url: str
) -> None:
    tag = channel.delivery_tag
    with pytest.raises(ValueError, match="message_id"):
        await publish_batch(channel, "amq.topic", [*messages(PLACED), (PLACED, b"x", spec.Basic.Properties())], soon())
    assert channel.delivery_tag == tag  # the channel's delivery tags still match the broker's
    async with event_queue(broker_url) as queue:
        assert await publish_batch(channel, queue.exchange, messages(PLACED), soon()) == [None]
