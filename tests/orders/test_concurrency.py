"""Many concurrent orders against the real service (Granian, 2 workers): invariants checked in the database."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx

from tests.conftest import ALL_ROUTES, Catalog
from tests.support.granian import GranianServer

# Also through PgBouncer in transaction mode, prepared statements off and on.
ROUTES = ALL_ROUTES


async def post_orders(server: GranianServer, bodies: list[tuple[str, list[dict[str, int]]]]) -> list[httpx.Response]:
    """Send every order at once (one connection each) and return the responses."""
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        return await asyncio.gather(
            *(client.post("/orders", json={"items": items}, headers={"X-User": user}) for user, items in bodies)
        )


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
