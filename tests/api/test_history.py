"""GET /orders/me pages (keyset, Link header), GET /orders/{id}, POST /orders/{id}/cancel."""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from sqlalchemy import text

from orders_service.config import Settings
from tests.conftest import ALL_ROUTES, Catalog
from tests.support.granian import GranianServer

# Also through PgBouncer in transaction mode, prepared statements off and on.
ROUTES = ALL_ROUTES

Client = AsyncTestClient[Litestar]
ALICE = {"X-User": "alice"}
NEXT_LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


async def place(client: Client, qty: int = 1, user: str = "alice", product_id: int = 1) -> Any:
    response = await client.post(
        "/orders", json={"items": [{"product_id": product_id, "qty": qty}]}, headers={"X-User": user}
    )
    assert response.status_code == 200, response.text
    return response.json()


def next_url(response: httpx.Response) -> str | None:
    link = response.headers.get("link")
    if link is None:
        return None
    match = NEXT_LINK.match(link)
    assert match, link
    return match["url"]


async def walk(client: Client | httpx.AsyncClient, first_url: str, user: str = "alice") -> list[list[Any]]:
    pages: list[list[Any]] = []
    url: str | None = first_url
    while url is not None:
        response = await client.get(url, headers={"X-User": user})
        assert response.status_code == 200, response.text
        pages.append(response.json())
        url = next_url(response)
    return pages


async def test_pages_cover_every_order_once_newest_first(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=1000)
    placed = [(await place(client, qty=n))["id"] for n in range(1, 8)]

    pages = await walk(client, "/orders/me?limit=3")

    assert [len(page) for page in pages] == [3, 3, 1]
    assert [order["id"] for page in pages for order in page] == placed[::-1]


async def test_last_full_page_has_no_next_link(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=1000)
    for _ in range(4):
        await place(client)
    first = await client.get("/orders/me?limit=2", headers=ALICE)
    second_url = next_url(first)
    assert second_url is not None
    second = await client.get(second_url, headers=ALICE)
    assert len(second.json()) == 2
    assert next_url(second) is None


async def test_default_page_is_50_orders(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=1000)
    with catalog.engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {catalog.orders_schema}.orders (user_id, total_cents) "
                "SELECT 'alice', 0 FROM generate_series(1, 60)"
            )
        )
    response = await client.get("/orders/me", headers=ALICE)
    assert len(response.json()) == 50
    assert next_url(response) is not None
    assert "limit=50" in (next_url(response) or "")


async def test_orders_sharing_a_created_at_are_each_listed_once_across_pages(client: Client, catalog: Catalog) -> None:
    """Orders with one ``created_at`` (placed in one transaction, imported in bulk) straddle page boundaries:
    the cursor carries the id too, so every page starts right after the last order of the previous one."""

    def insert_orders(count: int, created_at: str) -> list[int]:
        with catalog.engine.begin() as connection:
            return list(
                connection.execute(
                    text(
                        f"INSERT INTO {catalog.orders_schema}.orders (user_id, total_cents, created_at) "
                        "SELECT 'alice', 0, CAST(:created_at AS timestamptz) FROM generate_series(1, :count) "
                        "RETURNING id"
                    ),
                    {"created_at": created_at, "count": count},
                ).scalars()
            )

    earlier = insert_orders(2, "2026-01-02 03:04:05.000001+00")
    tied = insert_orders(7, "2026-01-02 03:04:05.678901+00")
    later = insert_orders(2, "2026-01-02 03:04:06+00")

    pages = await walk(client, "/orders/me?limit=3")

    newest_first = sorted(later, reverse=True) + sorted(tied, reverse=True) + sorted(earlier, reverse=True)
    assert [[order["id"] for order in page] for page in pages] == [
        newest_first[0:3],
        newest_first[3:6],
        newest_first[6:9],
        newest_first[9:11],
    ]


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=201",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "cursor=",
        "cursor=%%%",
        "cursor=bm90LWEtY3Vyc29y",
        "cursor=WyJub3QtYS1kYXRlIiwxXQ",
        "cursor=WyIyMDI2LTAxLTAxVDAwOjAwOjAwWiIsLTFd",
    ],
)
async def test_bad_paging_parameters_are_400(client: Client, catalog: Catalog, query: str) -> None:
    response = await client.get(f"/orders/me?{query}", headers=ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == 400


async def test_a_cursor_is_accepted_only_as_it_was_handed_out(client: Client, catalog: Catalog) -> None:
    """One position, one spelling: padding, a NUL or a character outside base64url, the standard alphabet's
    ``+``/``/`` would all decode to the same position with a lenient decoder."""
    catalog.add(1, stock=10)
    for _ in range(3):
        await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers=ALICE)
    first = await client.get("/orders/me?limit=1", headers=ALICE)
    cursor = parse_qs(urlsplit(next_url(first) or "").query)["cursor"][0]
    assert (await client.get(f"/orders/me?limit=1&cursor={cursor}", headers=ALICE)).status_code == 200
    respelled = [
        f"{cursor}=",
        f"{cursor}==",
        f"{cursor[:4]}%00{cursor[4:]}",
        f"{cursor[:4]}%20{cursor[4:]}",
        f"{cursor[:4]}.{cursor[4:]}",
        f"{cursor}%0A",
        cursor.replace("-", "+").replace("_", "/") if ("-" in cursor or "_" in cursor) else f"+{cursor}",
    ]
    for spelling in respelled:
        response = await client.get(f"/orders/me?limit=1&cursor={spelling}", headers=ALICE)
        assert response.status_code == 400, (spelling, response.text)
        assert "invalid cursor" in response.json()["detail"]


async def test_paging_is_stable_while_new_orders_arrive(granian: GranianServer, catalog: Catalog) -> None:
    """Walking all pages while new orders are placed never repeats or skips an order that existed before."""
    catalog.add(1, stock=10_000)
    async with httpx.AsyncClient(base_url=granian.base_url, timeout=60) as client:

        async def place_one() -> int:
            response = await client.post(
                "/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "walker"}
            )
            assert response.status_code == 200
            return int(response.json()["id"])

        before = [await place_one() for _ in range(40)]
        walking = asyncio.create_task(walk(client, "/orders/me?limit=7", user="walker"))
        arrivals = await asyncio.gather(*(place_one() for _ in range(40)))
        pages = await walking

    seen = [order["id"] for page in pages for order in page]
    assert set(before) <= set(seen)
    assert Counter(seen).most_common(1)[0][1] == 1  # nothing twice
    assert [order_id for order_id in seen if order_id in set(before)] == before[::-1]
    assert set(seen) <= set(before) | set(arrivals)


async def test_first_page_reads_the_index_in_order(catalog: Catalog, settings: Settings) -> None:
    with catalog.engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {settings.db_schema}.orders (user_id, total_cents) "
                "SELECT 'u' || (n % 500), n FROM generate_series(1, 20000) AS n"
            )
        )
        connection.execute(text(f"ANALYZE {settings.db_schema}.orders"))
        plan = "\n".join(
            connection.execute(
                text(
                    f"EXPLAIN SELECT id FROM {settings.db_schema}.orders WHERE user_id = 'u7' "
                    "AND (created_at, id) < (now(), 1000000) ORDER BY created_at DESC, id DESC LIMIT 51"
                )
            ).scalars()
        )
    assert "ix_orders_user_id_created_at_id" in plan
    assert "Sort" not in plan


async def test_get_my_order_by_id(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    order = await place(client, qty=2)
    response = await client.get(f"/orders/{order['id']}", headers=ALICE)
    assert response.status_code == 200
    assert response.json() == order


async def test_someone_elses_order_and_a_missing_one_are_the_same_404(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    bobs = await place(client, user="bob")
    other = await client.get(f"/orders/{bobs['id']}", headers=ALICE)
    missing = await client.get(f"/orders/{bobs['id'] + 1000}", headers=ALICE)
    assert other.status_code == missing.status_code == 404
    assert other.json().keys() == missing.json().keys()
    assert other.json()["title"] == missing.json()["title"]


@pytest.mark.parametrize("order_id", ["0", "-1", "9223372036854775808"])
async def test_impossible_order_ids_are_4xx(client: Client, catalog: Catalog, order_id: str) -> None:
    response = await client.get(f"/orders/{order_id}", headers=ALICE)
    assert response.status_code in {400, 404}
    assert (await client.post(f"/orders/{order_id}/cancel", headers=ALICE)).status_code in {400, 404}


async def test_cancel_puts_stock_back_and_marks_the_order(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    catalog.add(2, stock=10)
    order = (
        await client.post(
            "/orders",
            json={"items": [{"product_id": 1, "qty": 3}, {"product_id": 2, "qty": 1}]},
            headers=ALICE,
        )
    ).json()
    assert order["status"] == "placed"
    assert order["cancelled_at"] is None

    cancelled = await client.post(f"/orders/{order['id']}/cancel", headers=ALICE)

    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancelled_at"] is not None
    assert cancelled.json()["items"] == order["items"]
    assert (catalog.stock(1), catalog.stock(2)) == (10, 10)
    listed = (await client.get("/orders/me", headers=ALICE)).json()
    assert listed[0]["status"] == "cancelled"


async def test_cancelling_twice_restores_stock_once(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    order = await place(client, qty=4)
    first = await client.post(f"/orders/{order['id']}/cancel", headers=ALICE)
    second = await client.post(f"/orders/{order['id']}/cancel", headers=ALICE)
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert catalog.stock(1) == 10


async def test_cancelling_someone_elses_order_is_404_and_changes_nothing(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    bobs = await place(client, qty=4, user="bob")
    response = await client.post(f"/orders/{bobs['id']}/cancel", headers=ALICE)
    assert response.status_code == 404
    assert catalog.stock(1) == 6
    assert (await client.get(f"/orders/{bobs['id']}", headers={"X-User": "bob"})).json()["status"] == "placed"


async def test_cancellations_racing_new_orders_keep_stock_exact(granian: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, stock=100)
    catalog.add(2, stock=100)
    both = [{"product_id": 2, "qty": 1}, {"product_id": 1, "qty": 1}]
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=granian.base_url, timeout=60, limits=limits) as client:
        headers = {"X-User": "canceller"}
        cancelled_before = await scrape_cancelled(client)
        first = [(await client.post("/orders", json={"items": both}, headers=headers)).json() for _ in range(40)]
        cancels = [client.post(f"/orders/{order['id']}/cancel", headers=headers) for order in first]
        twice = [client.post(f"/orders/{order['id']}/cancel", headers=headers) for order in first[:20]]
        new = [client.post("/orders", json={"items": both[::-1]}, headers=headers) for _ in range(40)]
        responses = await asyncio.gather(*cancels, *twice, *new)
        cancelled_after = await scrape_cancelled(client)
    assert [r.status_code for r in responses] == [200] * 100
    # 40 placed, 40 cancelled, 40 placed again: 40 units of each product are out.
    assert (catalog.stock(1), catalog.stock(2)) == (60, 60)
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE status = 'cancelled'") == 40
    assert (
        catalog.scalar(
            "SELECT coalesce(sum(i.qty), 0) FROM {orders}.order_items i "
            "JOIN {orders}.orders o ON o.id = i.order_id WHERE o.status = 'placed' AND i.product_id = 1"
        )
        == 40
    )
    assert cancelled_after - cancelled_before == 40


async def scrape_cancelled(client: httpx.AsyncClient) -> float:
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415

    body = (await client.get("/metrics")).text
    return next(
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "orders_cancelled_total"
    )
