"""Idempotency-Key on POST /orders: one order per key and body, whatever the retries or the races."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY
from sqlalchemy import text

from orders_service.config import Settings
from tests.conftest import ALL_ROUTES, Catalog
from tests.support.granian import GranianServer

# Also through PgBouncer in transaction mode, prepared statements off and on.
ROUTES = ALL_ROUTES

Client = AsyncTestClient[Litestar]
LINES = [{"product_id": 1, "qty": 2}]


async def place(client: Client, key: str | None, items: list[dict[str, int]], user: str = "alice") -> httpx.Response:
    headers = {"X-User": user} | ({"Idempotency-Key": key} if key is not None else {})
    return await client.post("/orders", json={"items": items}, headers=headers)


async def test_retry_with_same_key_and_body_replays_the_order(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    first = await place(client, "k-1", LINES)
    retry = await place(client, "k-1", LINES)

    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json()
    assert "idempotent-replayed" not in first.headers
    assert retry.headers["idempotent-replayed"] == "true"
    assert catalog.stock(1) == 8
    assert catalog.order_count() == 1


async def test_a_replay_is_not_counted_as_a_new_order(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    before = REGISTRY.get_sample_value("orders_created_total") or 0.0
    await place(client, "counted-once", LINES)
    await place(client, "counted-once", LINES)
    await place(client, "counted-once", LINES)
    assert (REGISTRY.get_sample_value("orders_created_total") or 0.0) - before == 1


async def test_same_lines_in_another_order_or_split_count_as_the_same_body(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    catalog.add(2, stock=10)
    first = await place(client, "k", [{"product_id": 1, "qty": 2}, {"product_id": 2, "qty": 1}])
    retry = await place(
        client, "k", [{"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 1}, {"product_id": 1, "qty": 1}]
    )
    assert retry.status_code == 200
    assert retry.json()["id"] == first.json()["id"]
    assert (catalog.stock(1), catalog.stock(2)) == (8, 9)


async def test_same_key_with_another_body_is_422_and_reserves_nothing(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    assert (await place(client, "k", LINES)).status_code == 200
    reused = await place(client, "k", [{"product_id": 1, "qty": 3}])
    assert reused.status_code == 422
    assert "different request body" in reused.json()["detail"]
    assert catalog.stock(1) == 8
    assert catalog.order_count() == 1


async def test_keys_are_scoped_to_the_user(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    alice = await place(client, "shared", LINES, user="alice")
    bob = await place(client, "shared", LINES, user="bob")
    assert alice.json()["id"] != bob.json()["id"]
    assert bob.json()["user_id"] == "bob"
    assert catalog.stock(1) == 6


async def test_a_key_whose_first_attempt_failed_can_be_retried(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=1)
    failed = await place(client, "k", LINES)
    assert failed.status_code == 400
    assert failed.json()["reason"] == "insufficient_stock"
    with catalog.engine.begin() as connection:
        connection.execute(text(f"UPDATE {catalog.catalog_schema}.products SET stock = 5 WHERE id = 1"))
    retried = await place(client, "k", LINES)
    assert retried.status_code == 200
    assert "idempotent-replayed" not in retried.headers
    assert catalog.stock(1) == 3


async def test_without_a_key_every_request_is_a_new_order(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    await place(client, None, LINES)
    await place(client, None, LINES)
    assert catalog.order_count() == 2


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\there", "é"], ids=["empty", "too long", "control", "non-ascii"])
async def test_malformed_key_is_400_and_writes_nothing(client: Client, catalog: Catalog, key: str) -> None:
    catalog.add(1, stock=10)
    response = await client.post(
        "/orders", json={"items": LINES}, headers=[(b"X-User", b"alice"), (b"Idempotency-Key", key.encode())]
    )
    assert response.status_code == 400
    assert response.json()["errors"][0]["key"] == "idempotency_key"
    assert response.json()["errors"][0]["source"] == "header"
    assert catalog.order_count() == 0


async def test_many_simultaneous_requests_with_one_key_place_one_order(
    granian: GranianServer, catalog: Catalog
) -> None:
    catalog.add(1, stock=100)
    limits = httpx.Limits(max_connections=40, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=granian.base_url, limits=limits, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post("/orders", json={"items": LINES}, headers={"X-User": "racer", "Idempotency-Key": "same"})
                for _ in range(40)
            )
        )
    assert Counter(r.status_code for r in responses) == {200: 40}
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 39
    assert catalog.stock(1) == 98
    assert catalog.order_count() == 1


async def test_purge_deletes_old_keys_and_keeps_orders(client: Client, catalog: Catalog, settings: Settings) -> None:
    catalog.add(1, stock=10)
    old = (await place(client, "old", LINES)).json()
    await place(client, "fresh", LINES)
    with catalog.engine.begin() as connection:
        connection.execute(
            text(f"UPDATE {settings.db_schema}.idempotency_keys SET created_at = now() - interval '25 hours'"),
        )
        connection.execute(
            text(f"UPDATE {settings.db_schema}.idempotency_keys SET created_at = now() WHERE key = 'fresh'")
        )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "orders_service.cli", "purge-idempotency-keys"],
        env={**os.environ, **settings.as_env()},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert "deleted 1 " in result.stdout
    assert catalog.scalar("SELECT count(*) FROM {orders}.idempotency_keys") == 1
    assert catalog.order_count() == 2
    # The purged key is free again: a new order, not a replay.
    again = await place(client, "old", LINES)
    assert again.json()["id"] != old["id"]


def test_purge_refuses_less_than_24_hours(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orders_service.cli", "purge-idempotency-keys", "--older-than-hours", "1"],
        env={**os.environ, **settings.as_env()},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 2
    assert "24" in result.stderr
