"""The saturation gauges show where requests wait: in a product's queue, for a pooled connection, on a row."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, text

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.faults import wait_until
from tests.support.granian import GranianServer, start_granian
from tests.support.scrape import scrape

HELD, HELD_TOO, OTHER = 1, 3, 2
POOL_SIZE = 2  # the two held products' transactions take the whole pool


@pytest.fixture
def service(settings: Settings, catalog: Catalog, tmp_path: Path) -> Iterator[GranianServer]:
    catalog.add(HELD, stock=1000)
    catalog.add(OTHER, stock=1000)
    catalog.add(HELD_TOO, stock=1000)
    small = Settings.from_env({**settings.as_env(), "DB_POOL_SIZE": str(POOL_SIZE)})
    with start_granian(small, workers=1, metrics_dir=tmp_path / "metrics") as server:
        yield server


def gauges(server: GranianServer) -> dict[str, float]:
    samples = scrape(server)
    pool = (("pool", "requests"),)
    return {
        "in_use": samples[("db_pool_connections_in_use", pool)],
        "max": samples[("db_pool_connections_max", pool)],
        "pool_waiting": samples[("db_pool_requests_waiting", pool)],
        "gate_waiting": samples[("product_gate_requests_waiting", ())],
    }


async def test_gauges_count_the_requests_waiting_behind_a_held_row(
    service: GranianServer, engine: Engine, settings: Settings
) -> None:
    idle = {"in_use": 0, "max": POOL_SIZE, "pool_waiting": 0, "gate_waiting": 0}
    assert gauges(service) == idle
    # The orders of OTHER find every connection in use: they wait for one, together (one transaction waiting for
    # the pool, the one that came after it was formed queued for the next): 1 or 2 waiting for the pool.
    waiting = {"in_use": POOL_SIZE, "max": POOL_SIZE, "gate_waiting": 3}
    async with httpx.AsyncClient(base_url=service.base_url, headers={"X-User": "gauged"}, timeout=30) as client:

        async def order(product_id: int) -> int:
            response = await client.post("/orders", json={"items": [{"product_id": product_id, "qty": 1}]})
            return response.status_code

        with engine.connect() as other_writer:
            other_writer.execute(
                text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id IN ({HELD}, {HELD_TOO}) FOR UPDATE")
            )
            # One transaction per product waits on its row; the other orders of HELD queue for its next one.
            held = [asyncio.create_task(order(HELD)) for _ in range(4)]
            await wait_until(lambda: gauges(service)["gate_waiting"] == 3, 4, "3 orders waiting at the gate")
            held.append(asyncio.create_task(order(HELD_TOO)))
            await wait_until(lambda: gauges(service)["in_use"] == POOL_SIZE, 4, "both held rows waited on")
            others = [asyncio.create_task(order(OTHER)) for _ in range(2)]  # no connection left for them
            await wait_until(
                lambda: gauges(service).items() >= waiting.items() and gauges(service)["pool_waiting"] >= 1,
                4,
                f"gauges {waiting} and orders waiting for the pool",
            )
            other_writer.rollback()
        assert await asyncio.gather(*held, *others) == [200] * 7
    assert gauges(service) == idle
