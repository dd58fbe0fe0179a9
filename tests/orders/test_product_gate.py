"""The per-product gate (PRODUCT_GATE_LIMIT), seen from outside: through HTTP and /metrics only.

Under real Granian with one worker (the gate is per worker): Litestar's in-process test client
runs one request at a time, and these tests need requests that wait side by side.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase, backends_waiting_for_a_lock
from tests.support.faults import wait_until
from tests.support.granian import start_granian

HELD = 1
ORDER = {"items": [{"product_id": HELD, "qty": 1}]}
LOCK_TIMEOUT_MS = 2000  # also how long an order waits at the gate


async def gate_waiting(http: httpx.AsyncClient) -> float:
    """``product_gate_requests_waiting`` as /metrics shows it."""
    body = (await http.get("/metrics")).text
    values = [
        sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
        if sample.name == "product_gate_requests_waiting"
    ]
    assert len(values) == 1, body
    return values[0]


async def until_gate_waiting(http: httpx.AsyncClient, count: float, within: float) -> None:
    deadline = time.monotonic() + within
    while (waiting := await gate_waiting(http)) != count:
        assert time.monotonic() < deadline, f"{waiting} orders wait at the gate, not {count}"
        await asyncio.sleep(0.02)  # polling the service's own report


async def test_orders_that_failed_on_a_held_row_leave_the_gate_to_the_next_order(
    database: ProvisionedDatabase, settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    """With PRODUCT_GATE_LIMIT=1, an order that got a lock-timeout 503 and the two that waited behind it
    leave the product's only place: once the row is free, the next order goes through and nobody waits."""
    catalog.add(HELD, stock=10)
    one_at_a_time = Settings.from_env(
        {**settings.as_env(), "PRODUCT_GATE_LIMIT": "1", "DB_LOCK_TIMEOUT_MS": str(LOCK_TIMEOUT_MS)}
    )
    with start_granian(one_at_a_time, workers=1, metrics_dir=tmp_path / "metrics") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            assert await gate_waiting(http) == 0
            with catalog.engine.connect() as other_writer:
                other_writer.execute(
                    text(f"SELECT 1 FROM {catalog.catalog_schema}.products WHERE id = {HELD} FOR UPDATE")
                )
                first = asyncio.create_task(http.post("/orders", json=ORDER, headers={"X-User": "first"}))
                await wait_until(
                    lambda: len(backends_waiting_for_a_lock(database)) == 1, 10, "the first order on the row"
                )
                behind = [
                    asyncio.create_task(http.post("/orders", json=ORDER, headers={"X-User": f"behind-{n}"}))
                    for n in range(2)
                ]
                await until_gate_waiting(http, 2, within=10)
                failed = await asyncio.gather(first, *behind)
                other_writer.rollback()

            after = await http.post("/orders", json=ORDER, headers={"X-User": "after"})
            waiting_after = await gate_waiting(http)

    assert [response.status_code for response in failed] == [503] * 3, [response.text for response in failed]
    assert failed[0].json()["reason"] == "lock_timeout"
    # One of those behind gets the place when the first leaves, and waits on the row; the other gives up at the gate.
    assert {response.json()["reason"] for response in failed[1:]} <= {"lock_timeout", "product_busy"}
    assert after.status_code == 200, after.text
    assert waiting_after == 0
    assert catalog.stock(HELD) == 9
