"""POST /orders and GET /orders/me against a real PostgreSQL (app in-process)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.db.engine import ROLE_TIMEOUTS_QUERY
from orders_service.db.transactions import SET_TIMEOUTS
from orders_service.observability.logs import JsonFormatter
from tests.conftest import ALL_ROUTES, Catalog
from tests.support.database import RUNTIME_TIME_ZONE

Client = AsyncTestClient[Litestar]
ALICE = {"X-User": "alice"}


async def place(client: Client, items: list[dict[str, int]], user: str = "alice") -> Any:
    return await client.post("/orders", json={"items": items}, headers={"X-User": user})


async def test_place_order_answers_200_with_the_order_and_reserves_stock(client: Client, catalog: Catalog) -> None:
    catalog.add(1, price_cents=1299, stock=10)
    catalog.add(2, price_cents=2500, stock=5)

    response = await place(client, [{"product_id": 1, "qty": 2}, {"product_id": 2, "qty": 1}])

    assert response.status_code == 200
    order = response.json()
    assert order["user_id"] == "alice"
    assert order["total_cents"] == 2 * 1299 + 2500
    assert order["items"] == [
        {"product_id": 1, "qty": 2, "price_cents": 1299},
        {"product_id": 2, "qty": 1, "price_cents": 2500},
    ]
    created_at = datetime.fromisoformat(order["created_at"])
    assert created_at.utcoffset() is not None
    assert abs((datetime.now(UTC) - created_at).total_seconds()) < 60
    assert (catalog.stock(1), catalog.stock(2)) == (8, 4)
    assert (catalog.order_count(), catalog.item_count()) == (1, 2)


async def test_duplicate_lines_are_combined_into_one_item(client: Client, catalog: Catalog) -> None:
    catalog.add(1, price_cents=100, stock=10)
    response = await place(client, [{"product_id": 1, "qty": 2}, {"product_id": 1, "qty": 3}])
    assert response.status_code == 200
    assert response.json()["items"] == [{"product_id": 1, "qty": 5, "price_cents": 100}]
    assert catalog.stock(1) == 5
    assert catalog.item_count() == 1


async def test_combined_lines_are_checked_against_stock_as_a_whole(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=4)
    response = await place(client, [{"product_id": 1, "qty": 2}, {"product_id": 1, "qty": 3}])
    assert response.status_code == 400
    assert response.json()["reason"] == "insufficient_stock"
    assert catalog.stock(1) == 4


async def test_item_keeps_the_price_of_order_time(client: Client, catalog: Catalog) -> None:
    catalog.add(1, price_cents=500, stock=10)
    assert (await place(client, [{"product_id": 1, "qty": 1}])).status_code == 200
    catalog.set_price(1, 900)

    orders = (await client.get("/orders/me", headers=ALICE)).json()

    assert orders[0]["items"][0]["price_cents"] == 500
    assert orders[0]["total_cents"] == 500


async def test_unknown_product_is_400_naming_it_and_writes_nothing(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    response = await place(
        client, [{"product_id": 1, "qty": 1}, {"product_id": 42, "qty": 1}, {"product_id": 7, "qty": 1}]
    )
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["reason"] == "missing_product"
    assert body["product_ids"] == [7, 42]
    assert "7, 42" in body["detail"]
    assert catalog.stock(1) == 10
    assert catalog.order_count() == 0


async def test_insufficient_stock_rolls_back_every_line(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    catalog.add(2, stock=1)
    catalog.add(3, stock=10)
    response = await place(
        client, [{"product_id": 1, "qty": 3}, {"product_id": 2, "qty": 2}, {"product_id": 3, "qty": 1}]
    )
    assert response.status_code == 400
    assert response.json()["reason"] == "insufficient_stock"
    assert response.json()["product_ids"] == [2]
    assert (catalog.stock(1), catalog.stock(2), catalog.stock(3)) == (10, 1, 10)
    assert (catalog.order_count(), catalog.item_count()) == (0, 0)


async def test_stock_can_be_ordered_down_to_zero(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=3)
    assert (await place(client, [{"product_id": 1, "qty": 3}])).status_code == 200
    assert catalog.stock(1) == 0
    assert (await place(client, [{"product_id": 1, "qty": 1}])).status_code == 400


async def test_total_beyond_bigint_is_rejected_without_writing(client: Client, catalog: Catalog) -> None:
    max_int = 2**31 - 1
    for product_id in range(1, 4):
        catalog.add(product_id, price_cents=max_int, stock=max_int)
    lines = [{"product_id": product_id, "qty": max_int} for product_id in range(1, 4)]
    response = await place(client, lines)
    assert response.status_code == 400
    assert response.json()["reason"] == "total_too_large"
    assert catalog.stock(1) == max_int
    assert catalog.order_count() == 0


async def test_missing_or_blank_user_is_401(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    body = {"items": [{"product_id": 1, "qty": 1}]}
    for headers in ({}, {"X-User": ""}, {"X-User": "   "}):
        response = await client.post("/orders", json=body, headers=headers)
        assert response.status_code == 401
        assert response.json()["status"] == 401
        assert "X-User" in response.json()["detail"]
        assert (await client.get("/orders/me", headers=headers)).status_code == 401
    assert catalog.stock(1) == 10


async def test_user_longer_than_the_column_is_400(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    response = await place(client, [{"product_id": 1, "qty": 1}], user="u" * 256)
    assert response.status_code == 400
    assert "255" in response.json()["detail"]
    assert (await place(client, [{"product_id": 1, "qty": 1}], user="u" * 255)).status_code == 200
    assert catalog.order_count() == 1


async def test_my_orders_are_mine_only_newest_first_with_items(client: Client, catalog: Catalog) -> None:
    catalog.add(1, price_cents=10, stock=100)
    catalog.add(2, price_cents=20, stock=100)
    first = (await place(client, [{"product_id": 1, "qty": 1}])).json()
    await place(client, [{"product_id": 2, "qty": 1}], user="bob")
    second = (await place(client, [{"product_id": 2, "qty": 2}, {"product_id": 1, "qty": 1}])).json()

    response = await client.get("/orders/me", headers=ALICE)

    assert response.status_code == 200
    assert response.json() == [second, first]


async def test_no_orders_is_an_empty_list(client: Client, catalog: Catalog) -> None:
    response = await client.get("/orders/me", headers={"X-User": "nobody"})
    assert response.status_code == 200
    assert response.json() == []


async def test_listing_is_one_round_trip_whatever_the_number_of_orders(
    client: Client, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.add(1, stock=100)
    catalog.add(2, stock=100)
    for _ in range(5):
        await place(client, [{"product_id": 1, "qty": 1}, {"product_id": 2, "qty": 1}])
    traffic = record_traffic(monkeypatch)
    orders = (await client.get("/orders/me", headers=ALICE)).json()
    assert len(orders) == 5
    assert traffic == {"round trips": 1, "statements": 1, "timeouts sent": 0}


@pytest.mark.parametrize("lines", [1, 10, 100])
async def test_placing_an_order_is_one_round_trip_whatever_the_number_of_lines(
    client: Client, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, lines: int
) -> None:
    for product_id in range(1, lines + 1):
        catalog.add(product_id, stock=10)
    traffic = record_traffic(monkeypatch)
    response = await place(client, [{"product_id": p, "qty": 1} for p in range(lines, 0, -1)])
    assert response.status_code == 200
    assert traffic == {"round trips": 1, "statements": 1, "timeouts sent": 0}
    assert catalog.item_count() == lines


async def test_an_idempotency_key_adds_no_statement(
    client: Client, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog.add(1, stock=10)
    traffic = record_traffic(monkeypatch)
    response = await client.post(
        "/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={**ALICE, "Idempotency-Key": "one-trip"}
    )
    assert response.status_code == 200
    assert traffic == {"round trips": 1, "statements": 1, "timeouts sent": 0}


async def test_timeouts_other_than_the_roles_ride_along_in_the_same_round_trip(
    settings: Settings, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test role's defaults are the default timeouts (print-grants): other configured ones are sent."""
    catalog.add(1, stock=10)
    stricter = Settings.from_env({**settings.as_env(), "DB_LOCK_TIMEOUT_MS": "4000"})
    async with AsyncTestClient(app=create_app(stricter)) as client:
        await client.get("/orders/me", headers=ALICE)  # the first connection: SQLAlchemy's dialect looks around
        traffic = record_traffic(monkeypatch)
        assert (await place(client, [{"product_id": 1, "qty": 1}])).status_code == 200
        assert (await client.get("/orders/me", headers=ALICE)).status_code == 200
    assert traffic == {"round trips": 2, "statements": 2, "timeouts sent": 2}


def record_traffic(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count, from now on, the round trips the app makes (a pipeline, or a statement outside one), the
    statements it sends, and how often it sends the per-transaction timeouts (``SET_TIMEOUTS``).
    A new connection's one look at its role's timeouts is not counted."""
    traffic = {"round trips": 0, "statements": 0, "timeouts sent": 0}
    execute = psycopg.AsyncCursor.execute
    pipeline = psycopg.AsyncConnection.pipeline

    async def counting_execute(self: psycopg.AsyncCursor[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
        if query == ROLE_TIMEOUTS_QUERY:  # once per new connection, not per request
            return await execute(self, query, *args, **kwargs)
        if query == SET_TIMEOUTS:
            traffic["timeouts sent"] += 1
        else:
            traffic["statements"] += 1
        if self.connection._pipeline is None:
            traffic["round trips"] += 1
        return await execute(self, query, *args, **kwargs)

    def counting_pipeline(self: psycopg.AsyncConnection[Any]) -> Any:
        traffic["round trips"] += 1
        return pipeline(self)

    monkeypatch.setattr(psycopg.AsyncCursor, "execute", counting_execute)
    monkeypatch.setattr(psycopg.AsyncConnection, "pipeline", counting_pipeline)
    return traffic


@pytest.mark.parametrize("route", ALL_ROUTES, indirect=True)
async def test_an_order_waiting_too_long_for_a_lock_is_503_and_writes_nothing(
    service_settings: Settings, settings: Settings, catalog: Catalog
) -> None:
    catalog.add(1, stock=10)
    impatient = Settings.from_env({**service_settings.as_env(), "DB_LOCK_TIMEOUT_MS": "200"})
    with catalog.engine.connect() as other_writer:
        other_writer.execute(text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = 1 FOR UPDATE"))
        async with AsyncTestClient(app=create_app(impatient)) as client:
            response = await place(client, [{"product_id": 1, "qty": 1}])
        other_writer.rollback()
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert catalog.stock(1) == 10
    assert catalog.order_count() == 0


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_an_expected_503_is_one_warning_line_without_traceback_or_parameters(
    settings: Settings, catalog: Catalog
) -> None:
    catalog.add(1, stock=10)
    impatient = Settings.from_env({**settings.as_env(), "DB_LOCK_TIMEOUT_MS": "200"})
    headers = {"X-User": "secret-user-4711", "Idempotency-Key": "secret-key-4711"}
    with catalog.engine.connect() as other_writer:
        other_writer.execute(text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = 1 FOR UPDATE"))
        async with AsyncTestClient(app=create_app(impatient)) as client:
            captured = Captured()  # after the app configured logging, which replaces the root's handlers
            root = logging.getLogger()
            root.addHandler(captured)
            try:
                response = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers=headers)
            finally:
                root.removeHandler(captured)
        other_writer.rollback()
    assert response.status_code == 503
    ours = [record for record in captured.records if record.name != "httpx"]
    assert [(record.levelname, record.name) for record in ours] == [
        ("WARNING", "orders_service.api.problem_details"),
        ("INFO", "orders_service.access"),
    ]
    assert ours[0].getMessage() == "503 lock_timeout"
    assert ours[0].exc_info is None
    assert ours[1].status == 503  # type: ignore[attr-defined]
    assert not any("4711" in JsonFormatter().format(record) for record in ours)


async def test_cancelling_when_restock_would_overflow_is_409_and_changes_nothing(
    client: Client, catalog: Catalog
) -> None:
    catalog.add(1, stock=10)
    order = (await place(client, [{"product_id": 1, "qty": 5}])).json()
    with catalog.engine.begin() as connection:
        connection.execute(text(f"UPDATE {catalog.catalog_schema}.products SET stock = 2147483647 WHERE id = 1"))
    response = await client.post(f"/orders/{order['id']}/cancel", headers=ALICE)
    assert response.status_code == 409
    assert response.json()["title"] == "Cannot restock"
    assert catalog.stock(1) == 2147483647
    assert (await client.get(f"/orders/{order['id']}", headers=ALICE)).json()["status"] == "placed"


async def test_times_are_utc_whatever_the_roles_time_zone(client: Client, catalog: Catalog, settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.conninfo) as connection:
        assert (await (await connection.execute("SHOW TimeZone")).fetchone()) == (RUNTIME_TIME_ZONE,)
    catalog.add(1, stock=10)
    placed = (await place(client, [{"product_id": 1, "qty": 1}])).json()
    cancelled = (await client.post(f"/orders/{placed['id']}/cancel", headers=ALICE)).json()
    listed = (await client.get("/orders/me", headers=ALICE)).json()
    fetched = (await client.get(f"/orders/{placed['id']}", headers=ALICE)).json()

    stamps = [placed["created_at"], cancelled["created_at"], cancelled["cancelled_at"], listed[0]["created_at"]]
    stamps += [fetched["created_at"], fetched["cancelled_at"]]
    assert all(stamp.endswith("Z") for stamp in stamps), stamps
    assert cancelled["created_at"] == placed["created_at"] == listed[0]["created_at"]
