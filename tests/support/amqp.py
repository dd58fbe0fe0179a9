"""The tests' side of RabbitMQ: a durable queue bound to a test's own exchange, drained by polling."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage

from tests.conftest import unavailable

DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"


def amqp_url() -> str:
    return os.environ.get("TEST_AMQP_URL", DEFAULT_AMQP_URL)


async def require_broker() -> str:
    """The broker's URL, or skip (fail in CI) when none answers."""
    url = amqp_url()
    try:
        connection = await aio_pika.connect(url, timeout=5)
    except Exception as exc:
        unavailable(f"RabbitMQ does not answer at {url} ({type(exc).__name__}: {exc})")
        raise
    await connection.close()
    return url


def rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` on the broker's host; its standard output."""
    binary = shutil.which("rabbitmqctl") or (
        "/usr/sbin/rabbitmqctl" if os.path.exists("/usr/sbin/rabbitmqctl") else None
    )
    if binary is None:
        unavailable("rabbitmqctl is not installed")
        return ""
    return subprocess.run([binary, *args], check=True, capture_output=True, text=True, timeout=120).stdout


def close_connection_named(name: str, reason: str) -> None:
    """Have the broker close the connection whose client named itself ``name`` (aiormq's ``?name=``)."""
    for line in rabbitmqctl(
        "list_connections", "--no-table-headers", "--quiet", "pid", "client_properties"
    ).splitlines():
        pid, _, properties = line.partition("\t")
        if f'{{"connection_name","{name}"}}' in properties:
            rabbitmqctl("close_connection", pid, reason)
            return
    raise AssertionError(f"no broker connection named {name!r}")


@dataclass
class Received:
    body: bytes
    message_id: str | None
    routing_key: str | None
    content_type: str | None
    delivery_mode: int | None
    at: float  # time.monotonic() when the test read it
    timestamp: datetime | None = None  # the AMQP timestamp property


@dataclass
class EventQueue:
    """A durable queue of the test's own (it survives a broker's stop_app/start_app), bound to ``exchange``."""

    url: str
    exchange: str
    name: str = field(default_factory=lambda: f"orders-test-{uuid.uuid4().hex[:10]}")
    received: list[Received] = field(default_factory=list)

    async def declare(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            queue = await channel.declare_queue(self.name, durable=True)
            await queue.bind(exchange, routing_key="orders.order.#")

    async def drain(self) -> int:
        """Read every message waiting now; returns how many."""
        connection = await aio_pika.connect(self.url, timeout=10)
        count = 0
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(self.name, durable=True, passive=True)
            while (message := await queue.get(no_ack=True, fail=False)) is not None:
                self.received.append(_received(message))
                count += 1
        return count

    async def wait_for(self, condition: Callable[[list[Received]], bool], within: float, what: str) -> float:
        """Drain until ``condition(received)``; returns when it held. Polls the broker, with a deadline."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            with contextlib.suppress(aio_pika.exceptions.AMQPError, OSError):
                await self.drain()
            if condition(self.received):
                return time.monotonic()
            await asyncio.sleep(0.05)  # polling the broker
        raise AssertionError(f"{what} did not happen within {within}s ({len(self.received)} messages received)")

    async def delete(self) -> None:
        with contextlib.suppress(Exception):
            connection = await aio_pika.connect(self.url, timeout=10)
            async with connection:
                channel = await connection.channel()
                await channel.queue_delete(self.name)
                await channel.exchange_delete(self.exchange)


def _received(message: AbstractIncomingMessage) -> Received:
    return Received(
        message.body,
        message.message_id,
        message.routing_key,
        message.content_type,
        int(message.delivery_mode) if message.delivery_mode is not None else None,
        time.monotonic(),
        message.timestamp,
    )


@dataclass
class RefusingQueue:
    """A queue bound to ``exchange`` that takes no message (``x-max-length`` 0, ``reject-publish``): the broker
    nacks every publish routed to it, while it still delivers it to the exchange's other queues."""

    url: str
    exchange: str
    routing_key: str = "orders.order.#"
    name: str = field(default_factory=lambda: f"orders-test-refusing-{uuid.uuid4().hex[:10]}")

    async def declare(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(self.exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            arguments: dict[str, Any] = {"x-max-length": 0, "x-overflow": "reject-publish"}
            queue = await channel.declare_queue(self.name, durable=True, arguments=arguments)
            await queue.bind(exchange, routing_key=self.routing_key)

    async def delete(self) -> None:
        connection = await aio_pika.connect(self.url, timeout=10)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(self.name)


@contextlib.asynccontextmanager
async def refusing_queue(url: str, exchange: str, routing_key: str = "orders.order.#") -> AsyncIterator[RefusingQueue]:
    """A ``RefusingQueue`` on ``exchange``, deleted afterwards (``delete()`` ends the refusals sooner)."""
    queue = RefusingQueue(url, exchange, routing_key)
    await queue.declare()
    try:
        yield queue
    finally:
        with contextlib.suppress(Exception):
            await queue.delete()


@contextlib.asynccontextmanager
async def event_queue(url: str) -> AsyncIterator[EventQueue]:
    """A queue bound to a new exchange unique to the test (``queue.exchange``: give it to EVENTS_EXCHANGE)."""
    queue = EventQueue(url, f"orders-test-{uuid.uuid4().hex[:10]}")
    await queue.declare()
    try:
        yield queue
    finally:
        await queue.delete()
