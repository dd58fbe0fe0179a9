"""Many concurrent orders against the real service (Granian, 2 workers): invariants checked in the database."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.conftest import ALL_ROUTES, Catalog
from tests.support.granian import GranianServer
from tests.support.scrape import scrape

# Also through PgBouncer in transaction mode, prepared statements off and on.
ROUTES = ALL_ROUTES


async def post_orders(server: GranianServer, bodies: list[tuple[str, list[dict[str, int]]]]) -> list[httpx.Response]:
    """Send every order at once (one connection each) and return the responses."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/orders", json={"items": items}, headers={"X-User": user}) for user, items in bodies)
        )


@pytest.mark.usefixtures("stock_check")
async def test_200_concurrent_orders_for_50_units_sell_exactly_50(granian: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, price_cents=100, stock=50)

    responses = await post_orders(granian, [(f"user-{n}", [{"product_id": 1, "qty": 1}]) for n in range(200)])

    statuses = Counter(response.status_code for response in responses)
    assert statuses == {200: 50, 400: 150}
    assert all(r.json()["reason"] == "insufficient_stock" for r in responses if r.status_code == 400)
    assert catalog.stock(1) == 0
    assert catalog.order_count() == 50
    assert catalog.units_ordered(1) == 50
    assert len({r.json()["id"] for r in responses if r.status_code == 200}) == 50


async def test_opposite_line_orders_never_deadlock(granian: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, price_cents=100, stock=1000)
    catalog.add(2, price_cents=200, stock=1000)
    a_then_b = [{"product_id": 1, "qty": 1}, {"product_id": 2, "qty": 2}]
    b_then_a = [{"product_id": 2, "qty": 2}, {"product_id": 1, "qty": 1}]

    responses = await post_orders(granian, [("u", a_then_b if n % 2 else b_then_a) for n in range(100)])

    assert [r.status_code for r in responses] == [200] * 100
    assert (catalog.stock(1), catalog.stock(2)) == (900, 800)
    assert catalog.order_count() == 100
    assert catalog.item_count() == 200
    assert "deadlock" not in granian.log().lower()


@pytest.mark.usefixtures("stock_check")
async def test_concurrent_mixed_orders_keep_stock_and_orders_consistent(
    granian: GranianServer, catalog: Catalog
) -> None:
    """Orders of 1-3 products race for scarce stock: every unit sold is in exactly one order."""
    initial = {1: 30, 2: 20, 3: 10}
    for product_id, stock in initial.items():
        catalog.add(product_id, price_cents=product_id * 100, stock=stock)
    shapes = [
        [{"product_id": 1, "qty": 2}],
        [{"product_id": 3, "qty": 1}, {"product_id": 1, "qty": 1}],
        [{"product_id": 2, "qty": 3}, {"product_id": 3, "qty": 1}, {"product_id": 1, "qty": 1}],
        [{"product_id": 2, "qty": 1}, {"product_id": 2, "qty": 1}],
    ]

    responses = await post_orders(granian, [(f"u{n % 7}", shapes[n % len(shapes)]) for n in range(120)])

    assert {r.status_code for r in responses} <= {200, 400}
    accepted = [r.json() for r in responses if r.status_code == 200]
    # 60 units for 120 orders of 2-5 units: many must succeed, and every product must sell out.
    assert len(accepted) >= 15
    for product_id, stock in initial.items():
        sold = sum(item["qty"] for order in accepted for item in order["items"] if item["product_id"] == product_id)
        assert catalog.stock(product_id) == stock - sold >= 0
        assert catalog.units_ordered(product_id) == sold
        assert sold > 0
    assert catalog.order_count() == len(accepted)


@pytest.mark.usefixtures("stock_check")
async def test_a_flash_sale_sells_exactly_the_stock_in_combined_transactions(
    granian: GranianServer, catalog: Catalog
) -> None:
    """400 orders at once, all of product 1 (scarce), a third of them with another product too, each with an
    Idempotency-Key, 20 of them sent twice: the orders queued behind a transaction of product 1 share the next.

    Every unit sold is in exactly one order, each 200 is one order (twins one), each 400 wrote nothing (not even
    its key), every order has its event, and the orders really were combined (``orders_per_transaction``)."""
    catalog.add(1, price_cents=100, stock=150)
    for product_id in range(2, 7):
        catalog.add(product_id, price_cents=product_id * 10, stock=1000)
    orders = []
    for n in range(400):
        items = [{"product_id": 1, "qty": n % 2 + 1}]
        if n % 3 == 0:
            items.append({"product_id": 2 + n % 5, "qty": 1})
        orders.append((f"buyer-{n % 50}", f"key-{n}", items))
    sent = orders + orders[::20]  # every 20th twice
    before = scrape(granian)

    limits = httpx.Limits(max_connections=len(sent), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=granian.base_url, limits=limits, timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post("/orders", json={"items": items}, headers={"X-User": user, "Idempotency-Key": key})
                for user, key, items in sent
            )
        )
    after = scrape(granian)

    assert {r.status_code for r in responses} <= {200, 400}
    assert all(r.json()["reason"] == "insufficient_stock" for r in responses if r.status_code == 400)
    by_key: dict[str, set[int]] = {}
    for (_, key, _), response in zip(sent, responses, strict=True):
        if response.status_code == 200:
            by_key.setdefault(key, set()).add(response.json()["id"])
    assert all(len(ids) == 1 for ids in by_key.values())  # a twin answered with its order
    placed = [next(iter(ids)) for ids in by_key.values()]
    assert catalog.order_count() == len(placed) == len(set(placed))
    assert catalog.scalar("SELECT count(*) FROM {orders}.outbox") == len(placed)
    assert catalog.scalar("SELECT count(*) FROM {orders}.idempotency_keys") == len(placed)
    assert catalog.scalar("SELECT count(*) FROM {orders}.idempotency_keys WHERE order_id IS NULL") == 0
    sold = catalog.units_ordered(1)
    assert catalog.stock(1) == 150 - sold >= 0
    assert sold >= 149  # orders of 1 unit came after the stock ran low
    for product_id in range(2, 7):
        assert catalog.stock(product_id) == 1000 - catalog.units_ordered(product_id)
    combined = after[("orders_per_transaction_sum", ())] - before.get(("orders_per_transaction_sum", ()), 0)
    transactions = after[("orders_per_transaction_count", ())] - before.get(("orders_per_transaction_count", ()), 0)
    assert combined >= len(orders)
    assert transactions < combined / 2  # combined: 2 orders or more per transaction on average
    assert "each goes again alone" not in granian.log()  # no combined transaction failed (its tripwire included)
