"""One product's row held by another writer must not stall orders for every other product (the bulkhead)."""

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


async def measure(server: GranianServer) -> tuple[WrkResult, WrkResult, Counter[int]]:
    """Orders for the other products and for the held one at once, readiness probed meanwhile."""
    others = start_wrk(
        server.base_url, "orders_of_products.lua", [str(p) for p in OTHERS], connections=CONNECTIONS, seconds=WINDOW
    )
    held = start_wrk(server.base_url, "orders_of_products.lua", [str(HELD)], connections=CONNECTIONS, seconds=WINDOW)
    health: Counter[int] = Counter()
    end = time.monotonic() + WINDOW
    async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as client:
        while time.monotonic() < end:
            health[(await client.get("/health")).status_code] += 1
            await asyncio.sleep(0.2)  # a probe's period
    return await asyncio.to_thread(finish_wrk, others), await asyncio.to_thread(finish_wrk, held), health


async def test_a_held_product_leaves_other_products_their_throughput_and_readiness(
    service: GranianServer, engine: Engine, settings: Settings
) -> None:
    await measure(service)  # warm-up: connections opened, statements prepared
    free_others, free_held, _ = await measure(service)
    with engine.connect() as other_writer:
        other_writer.execute(text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = {HELD} FOR UPDATE"))
        held_others, held_held, health = await measure(service)
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
