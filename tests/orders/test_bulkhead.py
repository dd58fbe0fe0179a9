"""One product's row held by another writer must not stall orders for every other product (the bulkhead).

Neither when orders for it contain it alone, nor when they mix it with other products: an order for
[X, P] must not hold X's gate slot or row while it waits for P's.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from orders_service.config import Settings
from tests.conftest import Catalog, unavailable
from tests.support.granian import GranianServer, start_granian
from tests.support.wrk import WrkResult, finish_wrk, start_wrk, wrk_binary

HELD = 1
OTHERS = (2, 21)  # product ids, first and last
WINDOW = 6  # seconds of load measured; in the held run the row is held the whole time
CONNECTIONS = 24  # per wrk: one for the other products, one for the held product


@pytest.fixture
def service(settings: Settings, catalog: Catalog, tmp_path: Path) -> Iterator[GranianServer]:
    if wrk_binary() is None:
        unavailable("wrk is not installed")
    for product_id in range(HELD, OTHERS[1] + 1):
        catalog.add(product_id, price_cents=100, stock=100_000_000)
    with start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server:
        yield server


Load = tuple[str, list[str], int]  # a wrk script, its arguments, its connections


async def measure(server: GranianServer, first: Load, second: Load) -> tuple[WrkResult, WrkResult, Counter[int]]:
    """Two loads at once for ``WINDOW`` seconds, readiness probed meanwhile."""
    running = [
        start_wrk(server.base_url, script, args, connections=connections, seconds=WINDOW)
        for script, args, connections in (first, second)
    ]
    health: Counter[int] = Counter()
    end = time.monotonic() + WINDOW
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        while time.monotonic() < end:
            health[(await client.get("/health")).status_code] += 1
            await asyncio.sleep(0.2)  # a probe's period
    first_result, second_result = [await asyncio.to_thread(finish_wrk, process) for process in running]
    return first_result, second_result, health


async def measure_held_alone(server: GranianServer) -> tuple[WrkResult, WrkResult, Counter[int]]:
    """Orders for the other products, and orders for the held one alone."""
    return await measure(
        server,
        ("orders_of_products.lua", [str(p) for p in OTHERS], CONNECTIONS),
        ("orders_of_products.lua", [str(HELD)], CONNECTIONS),
    )


async def test_a_held_product_leaves_other_products_their_throughput_and_readiness(
    service: GranianServer, engine: Engine, settings: Settings
) -> None:
    await measure_held_alone(service)  # warm-up: connections opened, statements prepared
    free_others, free_held, _ = await measure_held_alone(service)
    with engine.connect() as other_writer:
        other_writer.execute(text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = {HELD} FOR UPDATE"))
        held_others, held_held, health = await measure_held_alone(service)
        other_writer.rollback()

    ratio = held_others.ok_per_second / free_others.ok_per_second
    print(
        f"\n[bulkhead] other products: {free_others.ok_per_second:.0f} orders/s with product {HELD} free, "
        f"{held_others.ok_per_second:.0f} orders/s with it held (ratio {ratio:.2f}); product {HELD}: "
        f"{free_held.ok_per_second:.0f} orders/s free, {held_held.requests} answers held ({held_held.non_2xx} 503s); "
        f"readiness while held {dict(health)}"
    )
    assert free_held.ok_per_second > 0
    assert held_held.requests == held_held.non_2xx  # the row really was held all along: no order got through
    assert held_others.non_2xx == held_others.socket_errors == 0
    assert ratio >= 0.8
    assert set(health) == {200}


# The held product sits among the others: an order takes its products' slots and rows in id order, so
# one for [X, P] with X < P would hold X's while waiting for P's.
MIXED = 50
MIXED_OTHERS = (41, 60)  # first and last, the held one excluded
STEADY_CONNECTIONS = 8  # clients that never order the held product
MIXER_CONNECTIONS = 40  # clients of which 10 % of orders take the held product beside 1-3 others
MIXED_SHARE_PERCENT = 10
MIXED_STOCK = 100_000_000


async def measure_mixed(server: GranianServer) -> tuple[WrkResult, WrkResult, Counter[int]]:
    """The steady clients (never the held product) and the mixers (a share of their orders take it too)."""
    first, last = (str(p) for p in MIXED_OTHERS)
    return await measure(
        server,
        ("orders_mixing_in.lua", [first, last, str(MIXED), "0"], STEADY_CONNECTIONS),
        ("orders_mixing_in.lua", [first, last, str(MIXED), str(MIXED_SHARE_PERCENT)], MIXER_CONNECTIONS),
    )


async def test_a_held_product_mixed_into_other_orders_stalls_only_the_orders_that_contain_it(
    settings: Settings, catalog: Catalog, engine: Engine, tmp_path: Path
) -> None:
    """48 clients, 2 workers; 10 % of the mixers' orders take P beside other products; P held by another session."""
    if wrk_binary() is None:
        unavailable("wrk is not installed")
    products = range(MIXED_OTHERS[0], MIXED_OTHERS[1] + 1)
    for product_id in products:
        catalog.add(product_id, price_cents=100, stock=MIXED_STOCK)
    with start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server:
        await measure_mixed(server)  # warm-up
        free_steady, free_mixers, _ = await measure_mixed(server)
        with engine.connect() as other_writer:
            other_writer.execute(
                text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = {MIXED} FOR UPDATE")
            )
            held_steady, held_mixers, health = await measure_mixed(server)
            other_writer.rollback()

    ratio = held_steady.ok_per_second / free_steady.ok_per_second
    print(
        f"\n[bulkhead, mixed orders] steady clients: {free_steady.ok_per_second:.0f} orders/s with product {MIXED} "
        f"free, {held_steady.ok_per_second:.0f} orders/s with it held (ratio {ratio:.2f}); mixers: "
        f"{free_mixers.ok_per_second:.0f} orders/s free, {held_mixers.ok_per_second:.0f} held "
        f"({held_mixers.non_2xx} 503s of {held_mixers.requests}); readiness while held {dict(health)}"
    )
    assert held_steady.non_2xx == held_steady.socket_errors == 0
    assert ratio >= 0.8
    assert set(health) == {200}
    assert held_mixers.socket_errors == 0
    # Every unit taken from stock is in exactly one order's items, and every order has its items.
    for product_id in products:
        assert MIXED_STOCK - catalog.stock(product_id) == catalog.units_ordered(product_id), product_id
    assert (
        catalog.scalar(
            f"SELECT count(*) FROM {catalog.orders_schema}.orders o WHERE NOT EXISTS "
            f"(SELECT 1 FROM {catalog.orders_schema}.order_items i WHERE i.order_id = o.id)"
        )
        == 0
    )
    # wrk counts the answers it read; a request in flight when it stopped may still have been placed.
    answered = sum(r.requests - r.non_2xx for r in (free_steady, free_mixers, held_steady, held_mixers))
    assert answered <= catalog.order_count()
