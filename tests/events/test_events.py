"""Events: the outbox row is written with the change; the relay publishes CloudEvents to RabbitMQ, at least once.

Real PostgreSQL, real RabbitMQ (``TEST_AMQP_URL``, default ``amqp://guest:guest@127.0.0.1:5672/``), the
service under real Granian. Each test publishes to an exchange of its own and reads a durable queue of
its own bound to it with ``orders.order.#``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from cloudevents.core.formats.json import JSONFormat
from litestar import Litestar
from litestar.testing import AsyncTestClient

from orders_service.app import create_app
from orders_service.cli import main as cli_main
from orders_service.config import Settings
from orders_service.events.relay import PUBLISHING, named_connection
from tests.conftest import Catalog
from tests.support.amqp import (
    Received,
    close_connection_named,
    event_queue,
    rabbitmqctl,
    refusing_queue,
    require_broker,
)
from tests.support.faults import freezable_proxy, wait_until
from tests.support.granian import free_port, start_granian
from tests.support.relay import (
    CANCELLED,
    PLACED,
    envelope,
    events_env,
    outbox_rows,
    pending,
    place_orders,
    placed_subjects,
    publish_failures,
    running_relay,
)
from tests.support.scrape import publish_failures as publish_failures_of
from tests.support.scrape import scrape


@pytest.fixture
async def broker_url() -> str:
    return await require_broker()


# --- the outbox, in-process (no broker needed) -------------------------------------------------


async def test_each_change_writes_one_event_with_it_and_nothing_else_does(
    client: AsyncTestClient[Litestar], catalog: Catalog
) -> None:
    catalog.add(1, price_cents=1299, stock=5)
    headers = {"X-User": "alice", "Idempotency-Key": "outbox-1"}
    placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers=headers)
    assert placed.status_code == 200, placed.text
    order_id = placed.json()["id"]
    replayed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers=headers)
    assert replayed.headers.get("Idempotent-Replayed") == "true"
    rejected = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 99}]}, headers={"X-User": "a"})
    assert rejected.status_code == 400
    unknown = await client.post("/orders", json={"items": [{"product_id": 7, "qty": 1}]}, headers={"X-User": "a"})
    assert unknown.status_code == 400
    assert outbox_rows(catalog) == [(order_id, PLACED, False)]

    assert (await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "alice"})).status_code == 200
    assert (await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "alice"})).status_code == 200
    assert (await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "mallory"})).status_code == 404
    assert outbox_rows(catalog) == [(order_id, PLACED, False), (order_id, CANCELLED, False)]


async def test_a_rolled_back_cancellation_writes_no_event(client: AsyncTestClient[Litestar], catalog: Catalog) -> None:
    catalog.add(1, stock=5)
    placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "bob"})
    order_id = placed.json()["id"]
    with catalog.engine.begin() as connection:  # restocking would overflow: the cancel's statement fails
        connection.exec_driver_sql(f"UPDATE {catalog.catalog_schema}.products SET stock = 2147483647 WHERE id = 1")
    assert (await client.post(f"/orders/{order_id}/cancel", headers={"X-User": "bob"})).status_code == 409
    assert outbox_rows(catalog) == [(order_id, PLACED, False)]


async def test_health_says_the_relay_cannot_reach_the_broker_without_failing(
    settings: Settings, catalog: Catalog
) -> None:
    nowhere = events_env(settings, f"amqp://guest:guest@127.0.0.1:{free_port()}/", "orders-test-nowhere")
    async with AsyncTestClient(app=create_app(nowhere)) as client:
        deadline = time.monotonic() + 20
        while (health := await client.get("/health")).json().get("events") != "broker unreachable":
            assert time.monotonic() < deadline, health.text
            await asyncio.sleep(0.05)  # polling the relay's state
        assert health.status_code == 200
        placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "c"})
        assert placed.status_code == 400  # the request path does not care: no product 1 here


def json_lines(log: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.splitlines() if line.startswith("{")]


def nowhere_url() -> str:
    """An AMQP URL where nothing listens."""
    return f"amqp://guest:guest@127.0.0.1:{free_port()}/"


async def test_an_unreachable_broker_is_one_warning_line_of_the_relay_and_no_error(
    settings: Settings, tmp_path: Path
) -> None:
    """The relay in serve retries; it says so once, at WARNING; aiormq's ERROR lines about it are not printed."""
    nowhere = events_env(settings, nowhere_url(), "orders-test-nowhere")
    with start_granian(nowhere, workers=1, metrics_dir=tmp_path / "metrics") as server:
        await wait_until(
            lambda: publish_failures_of(scrape(server), "unreachable") >= 3,
            30,
            "three failed attempts",
        )
        log = server.log()
    lines = json_lines(log)
    about_the_broker = [
        (line["level"], line["logger"])
        for line in lines
        if "broker unreachable" in line["message"] or line["logger"].startswith(("aiormq", "aio_pika"))
    ]
    assert about_the_broker == [("WARNING", "orders_service.events.relay")], log
    assert not [line for line in lines if line["level"] in {"ERROR", "CRITICAL"}], log
    assert "NoneType" not in log
    assert "exc_info" not in log


async def test_aiormqs_own_lines_about_an_unreachable_broker_are_debug(
    settings: Settings, tmp_path: Path, relays: list[subprocess.Popen[bytes]]
) -> None:
    """`orders-service relay` with LOG_LEVEL=DEBUG: aiormq's line for each failed attempt is there, at DEBUG."""
    relays.append(
        start_relay(events_env(settings, nowhere_url(), "orders-test-nowhere", LOG_LEVEL="DEBUG"), tmp_path, "d")
    )
    log_path = tmp_path / "relay-d.log"
    await wait_until(
        lambda: log_path.read_text().count("error when creating transport") >= 3, 30, "three failed attempts"
    )
    relays[-1].send_signal(signal.SIGTERM)
    assert relays[-1].wait(30) == 0
    lines = json_lines(log_path.read_text())
    assert {line["level"] for line in lines if "error when creating transport" in line["message"]} == {"DEBUG"}
    assert [line["level"] for line in lines if "broker unreachable" in line["message"]] == ["WARNING"]
    assert not [line for line in lines if line["level"] in {"ERROR", "CRITICAL"}]


def test_the_relays_connection_is_named_after_its_holder_unless_amqp_url_names_it() -> None:
    assert named_connection("amqp://u:p@broker:5672/", "host:12:ab") == "amqp://u:p@broker:5672/?name=host%3A12%3Aab"
    assert named_connection("amqp://broker/vh?heartbeat=30", "h") == "amqp://broker/vh?heartbeat=30&name=h"
    assert named_connection("amqp://broker/?name=mine", "h") == "amqp://broker/?name=mine"


async def test_a_connection_the_broker_closes_is_one_warning_line_broker_unreachable(
    settings: Settings, catalog: Catalog, broker_url: str, tmp_path: Path, relays: list[subprocess.Popen[bytes]]
) -> None:
    """The broker closes the relay's connection (as at its shutdown): one WARNING, no aiormq ERROR, publishing again."""
    async with event_queue(broker_url) as queue:
        relays.append(start_relay(events_env(settings, broker_url, queue.exchange), tmp_path, "closed"))
        log_path = tmp_path / "relay-closed.log"
        await wait_until(lambda: "publishing" in log_path.read_text(), 30, "the relay publishes")
        holder = re.findall(r"events relay (\S+): exchange", log_path.read_text())[0]
        await asyncio.to_thread(close_connection_named, holder, "closed by the test")
        await wait_until(lambda: log_path.read_text().count("publishing") >= 2, 30, "the relay publishes again")
        relays[-1].send_signal(signal.SIGTERM)
        assert relays[-1].wait(30) == 0
    log = log_path.read_text()
    lines = json_lines(log)
    warnings = [line["message"] for line in lines if line["level"] == "WARNING"]
    assert len(warnings) == 1, log
    assert "broker unreachable (connection lost: ConnectionClosed" in warnings[0]
    assert "closed by the test" in warnings[0]
    assert not [line for line in lines if line["level"] in {"ERROR", "CRITICAL"}], log
    assert "NoneType" not in log


def test_purge_events_deletes_old_published_events_only(
    catalog: Catalog, settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with catalog.engine.begin() as connection:
        connection.exec_driver_sql(
            f"INSERT INTO {catalog.orders_schema}.outbox (order_id, type, occurred_at, published_at) "
            "SELECT n, 'orders.order.placed', now() - interval '10 days', "
            "CASE WHEN n <= 7 THEN now() - interval '9 days' WHEN n <= 9 THEN now() END "
            "FROM generate_series(1, 12) AS n"
        )
    monkeypatch.setattr("orders_service.events.outbox.PURGE_EVENTS_BATCH", 3)  # several batches
    for name, value in settings.as_env().items():
        monkeypatch.setenv(name, value)
    assert cli_main(["purge-events", "--older-than-hours", "48"]) == 0
    assert "deleted 7 published event(s) older than 48 hours" in capsys.readouterr().out
    assert [order_id for order_id, _, _ in outbox_rows(catalog)] == [8, 9, 10, 11, 12]
    assert pending(catalog) == 3
    assert cli_main(["purge-events"]) == 0  # EVENTS_RETENTION_HOURS: 168
    assert len(outbox_rows(catalog)) == 5
    with pytest.raises(SystemExit):
        cli_main(["purge-events", "--older-than-hours", "0"])


# --- the relay in serve, with the real broker -----------------------------------------------------


def assert_valid_cloudevent(message: Received) -> None:
    """The envelope against the CloudEvents 1.0 specification (the SDK's JSON format reader validates it)."""
    event = JSONFormat().read(None, message.body)
    assert event.get_specversion() == "1.0"
    assert event.get_id() == message.message_id
    assert event.get_source() == "/orders-service"
    assert event.get_type() == message.routing_key
    assert event.get_datacontenttype() == "application/json"
    moment = event.get_time()
    assert moment is not None
    assert moment.utcoffset() == timedelta(0)  # RFC 3339, UTC
    assert message.content_type == "application/cloudevents+json"
    assert message.delivery_mode == 2  # persistent


async def test_a_consumer_receives_placed_and_cancelled_exactly(
    settings: Settings, catalog: Catalog, broker_url: str, tmp_path: Path
) -> None:
    catalog.add(1, price_cents=1299, stock=10)
    catalog.add(2, price_cents=2500, stock=5)
    async with event_queue(broker_url) as queue:
        service = events_env(settings, broker_url, queue.exchange)
        with start_granian(service, workers=2, metrics_dir=tmp_path / "metrics") as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                body = {"items": [{"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 2}]}
                headers = {"X-User": "alice", "Idempotency-Key": "events-1"}
                placed = await http.post("/orders", json=body, headers=headers)
                assert placed.status_code == 200, placed.text
                order_id = placed.json()["id"]
                replay = await http.post("/orders", json=body, headers=headers)
                assert replay.headers.get("Idempotent-Replayed") == "true"
                rejected = await http.post("/orders", json={"items": [{"product_id": 2, "qty": 9}]}, headers=headers)
                assert rejected.status_code == 422  # same key, other lines
                short = await http.post(
                    "/orders", json={"items": [{"product_id": 2, "qty": 9}]}, headers={"X-User": "b"}
                )
                assert short.status_code == 400
                cancelled = await http.post(f"/orders/{order_id}/cancel", headers={"X-User": "alice"})
                assert cancelled.status_code == 200
                await http.post(f"/orders/{order_id}/cancel", headers={"X-User": "alice"})
                shown = await http.get(f"/orders/{order_id}", headers={"X-User": "alice"})

                await queue.wait_for(lambda received: len(received) >= 2, 30, "both events")
                await wait_until(lambda: pending(catalog) == 0, 30, "every event marked published")
                await queue.drain()
                health = (await http.get("/health")).json()

            def backlog_reported_empty() -> bool:  # each relay refreshes the gauges once per cycle
                metrics = scrape(server)
                return (
                    metrics[("orders_events_pending", ())]
                    == 0
                    == metrics[("orders_events_oldest_pending_age_seconds", ())]
                )

            await wait_until(backlog_reported_empty, 10, "the gauges show no backlog")
            metrics = scrape(server)

    assert [message.routing_key for message in queue.received] == [PLACED, CANCELLED]
    for message in queue.received:
        assert_valid_cloudevent(message)
    first, second = (envelope(message) for message in queue.received)
    assert first.id != second.id
    assert [first.id, second.id] == [message.message_id for message in queue.received]
    assert (first.specversion, first.source, first.type, first.subject) == (
        "1.0",
        "/orders-service",
        PLACED,
        str(order_id),
    )
    assert (second.type, second.subject, second.datacontenttype) == (CANCELLED, str(order_id), "application/json")
    # data: the order byte for byte as the API returned it then.
    assert bytes(first.data) == placed.content
    assert bytes(second.data) == cancelled.content == shown.content
    assert first.time == placed.json()["created_at"]
    assert second.time == cancelled.json()["cancelled_at"]
    assert outbox_rows(catalog) == [(order_id, PLACED, True), (order_id, CANCELLED, True)]

    assert health["status"] == "ok"
    assert health["events"] in {"publishing", "standby"}
    published = {
        dict(labels)["type"]: value
        for (name, labels), value in metrics.items()
        if name == "orders_events_published_total"
    }
    assert published == {PLACED: 1.0, CANCELLED: 1.0}
    assert {dict(labels)["reason"] for name, labels in metrics if name == "orders_events_publish_failures_total"} == {
        "nacked",
        "unroutable",
        "unreachable",
        "timeout",
        "unexpected",
    }


async def _burst(base_url: str, count: int, clients: int, tag: str, product_ids: list[int]) -> list[tuple[int, float]]:
    """``count`` orders from ``clients`` concurrent clients: (order id, seconds) of each, all must succeed."""
    semaphore = asyncio.Semaphore(clients)
    results: list[tuple[int, float]] = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base_url, timeout=60, limits=limits) as http:

        async def one(n: int) -> None:
            async with semaphore:
                product = product_ids[n % len(product_ids)]
                started = time.monotonic()
                response = await http.post(
                    "/orders",
                    json={"items": [{"product_id": product, "qty": 1}]},
                    headers={"X-User": f"burst-{tag}-{n % 17}", "Idempotency-Key": f"{tag}-{n}"},
                )
                assert response.status_code == 200, response.text
                results.append((response.json()["id"], time.monotonic() - started))

        await asyncio.gather(*(one(n) for n in range(count)))
    return results


async def test_orders_flow_while_the_broker_is_down_and_every_event_arrives_after(
    settings: Settings, catalog: Catalog, broker_url: str, tmp_path: Path
) -> None:
    products = list(range(1, 21))
    for product in products:
        catalog.add(product, stock=100_000)
    async with event_queue(broker_url) as queue:
        service = events_env(settings, broker_url, queue.exchange)
        with start_granian(service, workers=2, metrics_dir=tmp_path / "metrics") as server:
            await _burst(server.base_url, 50, 32, "warm", products)  # every pooled connection open
            before = await _burst(server.base_url, 200, 32, "before", products)
            stopped = False
            try:
                burst = asyncio.create_task(_burst(server.base_url, 200, 32, "during", products))
                await asyncio.sleep(0)  # the burst is under way
                await asyncio.to_thread(rabbitmqctl, "stop_app")
                stopped = True
                down_at = time.monotonic()
                during = await burst
                while_down = await _burst(server.base_url, 200, 32, "down", products)
                health_down = (await asyncio.to_thread(httpx.get, f"{server.base_url}/health", timeout=10)).json()
                backlog = pending(catalog)
                failures_down = publish_failures_of(await asyncio.to_thread(scrape, server), "unreachable")
            finally:
                await asyncio.to_thread(rabbitmqctl, "start_app")
                await asyncio.to_thread(rabbitmqctl, "await_startup")
            restored_at = time.monotonic()
            assert stopped
            committed = {order_id for order_id, _ in [*before, *during, *while_down]}
            orders_in_db = catalog.order_count()

            def every_order_arrived(received: list[Received]) -> bool:
                return committed <= {int(envelope(m).subject) for m in received if m.routing_key == PLACED}

            arrived_at = await queue.wait_for(every_order_arrived, 90, "an event for every committed order")
            # The other worker's relay may still sit in its back-off (at most 5 s) before reconnecting.
            health_after = await _health_once_recovered(server.base_url, within=15)

    p50_before = statistics.median(seconds for _, seconds in before)
    p50_down = statistics.median(seconds for _, seconds in while_down)
    p50_during = statistics.median(seconds for _, seconds in during)
    placed_events = Counter(int(envelope(m).subject) for m in queue.received if m.routing_key == PLACED)
    duplicates = sum(count - 1 for count in placed_events.values())
    print(
        f"\n[events: broker down] orders committed {len(committed)} (+50 warm-up), in the database {orders_in_db}; "
        f"pending while down {backlog}; publish failures while down {failures_down:.0f}; "
        f"p50 before {p50_before * 1000:.1f} ms, during stop_app {p50_during * 1000:.1f} ms, "
        f"down {p50_down * 1000:.1f} ms; events received {len(queue.received)} "
        f"(placed {sum(placed_events.values())}, duplicates {duplicates}); broker down for "
        f"{restored_at - down_at:.1f} s; every event arrived {arrived_at - restored_at:.2f} s after start_app"
    )
    assert len(committed) == 600
    assert health_down["status"] == "ok"
    assert health_down["events"] in {"broker unreachable", "standby"}
    assert backlog > 0
    assert failures_down > 0
    # Orders did not wait for the broker (loosely: timing on a shared machine).
    assert p50_down <= 3 * p50_before + 0.05
    assert p50_during <= 3 * p50_before + 0.05
    assert health_after["events"] in {"publishing", "standby"}


async def _health_once_recovered(base_url: str, within: float) -> dict[str, Any]:
    """/health's body once it no longer says the broker is unreachable (or the last one seen)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while True:
            health: dict[str, Any] = (await client.get("/health")).json()
            if health["events"] != "broker unreachable" or time.monotonic() > deadline:
                return health
            await asyncio.sleep(0.1)  # polling the relay's reconnection, an outside process's state


# --- standalone relays: killed, restarted, two at once ---------------------------------------------


def start_relay(settings: Settings, log_dir: Path, name: str) -> subprocess.Popen[bytes]:
    with (log_dir / f"relay-{name}.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "orders_service.cli", "relay"],
            env={**os.environ, **settings.as_env()},
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def lease_holder_pid(catalog: Catalog) -> int | None:
    """The pid in the name of the relay holding a live lease."""
    with catalog.engine.connect() as connection:
        holder = connection.exec_driver_sql(
            f"SELECT holder FROM {catalog.orders_schema}.outbox_relay_lease WHERE expires_at > now()"
        ).scalar()
    return int(holder.split(":")[1]) if holder else None


@pytest.fixture
def relays() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(30)


async def test_relays_killed_restarted_and_running_together_lose_nothing(
    settings: Settings,
    catalog: Catalog,
    broker_url: str,
    tmp_path: Path,
    relays: list[subprocess.Popen[bytes]],
) -> None:
    catalog.add(1, stock=1_000_000)
    batch = 20
    async with event_queue(broker_url) as queue, contextlib.AsyncExitStack() as stack:
        relay_settings = events_env(
            settings, broker_url, queue.exchange, EVENTS_BATCH_SIZE=str(batch), EVENTS_LEASE_TTL_MS="3000"
        )
        relays += [start_relay(relay_settings, tmp_path, "a"), start_relay(relay_settings, tmp_path, "b")]
        placed_ids: list[int] = []
        cancelled_ids: list[int] = []
        stop_placing = asyncio.Event()

        async def place_orders(base_url: str) -> None:
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
                while not stop_placing.is_set():
                    response = await http.post(
                        "/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "relayed"}
                    )
                    assert response.status_code == 200, response.text
                    order_id = response.json()["id"]
                    placed_ids.append(order_id)
                    if order_id % 4 == 0:
                        cancel = await http.post(f"/orders/{order_id}/cancel", headers={"X-User": "relayed"})
                        assert cancel.status_code == 200
                        cancelled_ids.append(order_id)

        # The service publishes nothing itself: only the standalone relays do.
        service = events_env(settings, broker_url, queue.exchange, EVENTS_RELAY_IN_SERVE="false")
        server = stack.enter_context(start_granian(service, workers=1, metrics_dir=tmp_path / "metrics"))
        health = (await asyncio.to_thread(httpx.get, f"{server.base_url}/health", timeout=10)).json()
        assert health["events"] == "published by a separate relay (EVENTS_RELAY_IN_SERVE=false)"
        placing = asyncio.create_task(place_orders(server.base_url))
        try:
            await queue.wait_for(lambda received: len(received) >= 100, 60, "100 events")
            first_pid = lease_holder_pid(catalog)
            assert first_pid in {process.pid for process in relays}
            active = next(process for process in relays if process.pid == first_pid)
            active.send_signal(signal.SIGKILL)  # in the middle of publishing: orders keep coming
            killed_at = time.monotonic()
            active.wait(10)
            other = next(process for process in relays if process.pid != first_pid)
            took_over_at = await wait_until(
                lambda: lease_holder_pid(catalog) == other.pid, 20, "the other relay takes over"
            )
            seen = len(queue.received)
            await queue.wait_for(lambda received: len(received) >= seen + 100, 60, "100 more events")

            relays.append(start_relay(relay_settings, tmp_path, "c"))  # the killed one, started again
            await wait_until(lambda: "standby" in (tmp_path / "relay-c.log").read_text(), 30, "the new relay stands by")
            other.send_signal(signal.SIGTERM)  # a clean exit releases the lease: the new relay takes over at once
            assert other.wait(30) == 0
            stopped_at = time.monotonic()
            handed_over_at = await wait_until(
                lambda: lease_holder_pid(catalog) == relays[-1].pid, 20, "the restarted relay takes over"
            )
            seen = len(queue.received)
            await queue.wait_for(lambda received: len(received) >= seen + 50, 60, "50 more events")
        finally:
            stop_placing.set()
            await placing
        expected = {(order_id, PLACED) for order_id in placed_ids} | {
            (order_id, CANCELLED) for order_id in cancelled_ids
        }

        def all_arrived(received: list[Received]) -> bool:
            return expected <= {(int(envelope(m).subject), str(m.routing_key)) for m in received}

        await queue.wait_for(all_arrived, 60, "every event")
        await wait_until(lambda: pending(catalog) == 0, 30, "nothing pending")
        await queue.drain()

    by_id = Counter(message.message_id for message in queue.received)
    duplicates = sum(count - 1 for count in by_id.values())
    first_seen: dict[tuple[int, str], int] = {}
    for position, message in enumerate(queue.received):
        first_seen.setdefault((int(envelope(message).subject), str(message.routing_key)), position)
    print(
        f"\n[events: relays] orders {len(placed_ids)}, cancelled {len(cancelled_ids)}, "
        f"events expected {len(expected)}, "
        f"received {len(queue.received)} (duplicates {duplicates}); lease taken over "
        f"{took_over_at - killed_at:.2f} s after SIGKILL (TTL 3 s), "
        f"{handed_over_at - stopped_at:.2f} s after a clean SIGTERM"
    )
    assert {(int(envelope(m).subject), str(m.routing_key)) for m in queue.received} == expected
    assert duplicates <= batch  # at most what the killed relay published and had not marked
    assert took_over_at - killed_at <= 3 + 3  # the lease's TTL and a poll or two
    assert handed_over_at - stopped_at <= 3
    for order_id in cancelled_ids:  # per order: placed before cancelled
        assert first_seen[(order_id, PLACED)] < first_seen[(order_id, CANCELLED)]


async def test_relays_behind_pgbouncer_publish_by_polling(
    pgbouncer_plain: Settings,
    catalog: Catalog,
    broker_url: str,
    tmp_path: Path,
    relays: list[subprocess.Popen[bytes]],
) -> None:
    """Transaction pooling: no LISTEN, no session lock; the lease and the poll still give one publisher."""
    catalog.add(1, stock=1000)
    async with event_queue(broker_url) as queue:
        pooled = events_env(
            pgbouncer_plain, broker_url, queue.exchange, EVENTS_LISTEN="false", EVENTS_POLL_INTERVAL_MS="200"
        )
        relays += [start_relay(pooled, tmp_path, "a"), start_relay(pooled, tmp_path, "b")]
        service = events_env(pgbouncer_plain, broker_url, queue.exchange, EVENTS_RELAY_IN_SERVE="false")
        with start_granian(service, workers=1, metrics_dir=tmp_path / "metrics") as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                placed = [
                    (
                        await http.post(
                            "/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "p"}
                        )
                    ).json()["id"]
                    for _ in range(30)
                ]
                await http.post(f"/orders/{placed[0]}/cancel", headers={"X-User": "p"})
        expected = {(order_id, PLACED) for order_id in placed} | {(placed[0], CANCELLED)}
        await queue.wait_for(
            lambda received: expected <= {(int(envelope(m).subject), str(m.routing_key)) for m in received},
            30,
            "every event through PgBouncer",
        )
        await wait_until(lambda: pending(catalog) == 0, 30, "nothing pending")
    logs = [(tmp_path / f"relay-{name}.log").read_text() for name in ("a", "b")]
    assert sorted("publishing" in log for log in logs) == [False, True], logs  # one publisher, the other stands by
    assert len(queue.received) == len(expected)


# --- one relay in-process, while the broker refuses its publishes or never confirms them --------------


async def until_failed_twice_or_marked(catalog: Catalog, failures_before: float, events: int) -> None:
    """Until the relay failed to publish twice (so it had finished with the first failure), or marked an event."""
    await wait_until(
        lambda: publish_failures() >= failures_before + 2 or pending(catalog) < events, 60, "two failed publishes"
    )


async def test_events_the_broker_refuses_stay_pending_and_go_out_once_it_accepts_them(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """A queue that refuses every message makes the broker nack each publish: nothing is marked published."""
    catalog.add(1, stock=10)
    order_ids = await place_orders(client, 3)
    async with event_queue(broker_url) as queue, refusing_queue(broker_url, queue.exchange) as refusing:
        failures_before = publish_failures()
        async with running_relay(events_env(settings, broker_url, queue.exchange)):
            await until_failed_twice_or_marked(catalog, failures_before, len(order_ids))
            pending_while_refused = pending(catalog)
            await refusing.delete()
            await wait_until(lambda: pending(catalog) == 0, 30, "the events published once the broker accepts them")
        await queue.wait_for(lambda received: set(order_ids) <= placed_subjects(received), 30, "every event")

    assert pending_while_refused == len(order_ids)
    assert outbox_rows(catalog) == [(order_id, PLACED, True) for order_id in order_ids]


async def test_events_the_broker_never_confirms_stay_pending_and_go_out_later(
    client: AsyncTestClient[Litestar], settings: Settings, catalog: Catalog, broker_url: str
) -> None:
    """A frozen network between the relay and the broker (the broker itself keeps running): publishes are
    never confirmed, so after EVENTS_LEASE_TTL_MS the relay gives up on them, and they stay pending."""
    catalog.add(1, stock=10)
    broker = urlsplit(broker_url)
    async with event_queue(broker_url) as queue:
        with freezable_proxy((broker.hostname or "127.0.0.1", broker.port or 5672)) as proxy:
            through_proxy = broker._replace(netloc=f"{broker.username}:{broker.password}@127.0.0.1:{proxy.port}")
            relay_settings = events_env(settings, through_proxy.geturl(), queue.exchange, EVENTS_LEASE_TTL_MS="2000")
            async with running_relay(relay_settings) as relay:
                await wait_until(lambda: relay.state == PUBLISHING, 30, "the relay connected and holding the lease")
                failures_before = publish_failures()
                proxy.freeze()
                order_ids = await place_orders(client, 3)
                await until_failed_twice_or_marked(catalog, failures_before, len(order_ids))
                pending_while_frozen = pending(catalog)
                proxy.thaw()
                await wait_until(lambda: pending(catalog) == 0, 60, "the events published once the network is back")
        await queue.wait_for(lambda received: set(order_ids) <= placed_subjects(received), 30, "every event")

    assert pending_while_frozen == len(order_ids)
    assert outbox_rows(catalog) == [(order_id, PLACED, True) for order_id in order_ids]
