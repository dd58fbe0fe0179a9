"""Benchmark the real service (Granian, 1 worker) on a real PostgreSQL.

Measures, in one run (compare ratios, not absolute times across runs):
- server CPU time per request (Granian process tree, psutil) for POST /orders and GET /orders/me,
  next to GET /health/live (Litestar + Granian + metrics middleware, no database) as the floor;
- latency of the first page of GET /orders/me for a user with 100k orders versus one with 10.

    uv run python -m benchmarks.bench                 # embedded PostgreSQL, as the tests
    TEST_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres uv run python -m benchmarks.bench
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil
from sqlalchemy import create_engine, text

from orders_service import migrate
from orders_service.catalog import create_products_table
from orders_service.config import Settings
from tests.database import postgres_server, scratch_database
from tests.granian import GranianServer, start_granian

ORDERS = 3000
LISTS = 3000
CONCURRENCY = 16
HEAVY_ORDERS = 100_000


def server_cpu_seconds(server: GranianServer) -> float:
    root = psutil.Process(server.process.pid)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        times = process.cpu_times()
        total += times.user + times.system
    return total


async def run_requests(server: GranianServer, count: int, make: object) -> float:
    """Send ``count`` requests, CONCURRENCY at a time; return the server CPU seconds they cost."""
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=60) as client:
        queue = iter(range(count))

        async def worker() -> None:
            for n in queue:
                response = await make(client, n)  # type: ignore[operator]
                assert response.status_code == 200, response.text

        await worker_warmup(client, make)
        before = server_cpu_seconds(server)
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return server_cpu_seconds(server) - before


async def worker_warmup(client: httpx.AsyncClient, make: object) -> None:
    for n in range(50):
        await make(client, n)  # type: ignore[operator]


async def place(client: httpx.AsyncClient, n: int) -> httpx.Response:
    items = [{"product_id": 1 + n % 3, "qty": 1}, {"product_id": 4, "qty": 1}]
    return await client.post("/orders", json={"items": items}, headers={"X-User": f"bench-{n % 100}"})


async def list_mine(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.get("/orders/me?limit=10", headers={"X-User": f"bench-{n % 100}"})


async def liveness(client: httpx.AsyncClient, n: int) -> httpx.Response:
    return await client.get("/health/live")


async def first_page_latency(server: GranianServer, user: str, samples: int = 300) -> list[float]:
    timings = []
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        for _ in range(samples):
            started = time.perf_counter()
            response = await client.get("/orders/me", headers={"X-User": user})
            timings.append(time.perf_counter() - started)
            assert response.status_code == 200
            assert len(response.json()) == min(50, HEAVY_ORDERS if user == "heavy" else 10)
    return timings


def seed(settings: Settings) -> None:
    engine = create_engine(settings.database_url)
    schema = settings.db_schema
    with engine.begin() as connection:
        create_products_table(connection, settings)
        connection.execute(
            text(
                f"INSERT INTO {settings.catalog_schema}.products "
                "SELECT id, 100 * id, 100000000 FROM generate_series(1, 4) AS id"
            )
        )
    migrate.upgrade(settings)
    with engine.begin() as connection:
        for user, count in (("heavy", HEAVY_ORDERS), ("light", 10)):
            connection.execute(
                text(
                    f"INSERT INTO {schema}.orders (user_id, total_cents, created_at) "
                    f"SELECT '{user}', 100, now() - n * interval '1 second' FROM generate_series(1, {count}) AS n"
                )
            )
        # Other users' orders around them, as in a real table.
        connection.execute(
            text(
                f"INSERT INTO {schema}.orders (user_id, total_cents) "
                "SELECT 'other-' || (n % 5000), 100 FROM generate_series(1, 200000) AS n"
            )
        )
        connection.execute(
            text(
                f"INSERT INTO {schema}.order_items (order_id, product_id, qty, price_cents) "
                f"SELECT id, 1, 1, 100 FROM {schema}.orders"
            )
        )
        connection.execute(text(f"ANALYZE {schema}.orders"))
        connection.execute(text(f"ANALYZE {schema}.order_items"))
        plan = connection.execute(
            text(
                f"EXPLAIN ANALYZE SELECT id FROM {schema}.orders WHERE user_id = 'heavy' "
                "ORDER BY created_at DESC, id DESC LIMIT 51"
            )
        ).scalars()
        print("first-page plan (heavy user):")
        for line in plan:
            print("   ", line)
    engine.dispose()


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def main() -> None:
    with postgres_server() as server, scratch_database(server) as settings:
        seed(settings)
        with start_granian(settings, workers=1, metrics_dir=Path(tempfile.mkdtemp()) / "metrics") as granian:
            light = asyncio.run(first_page_latency(granian, "light"))
            heavy = asyncio.run(first_page_latency(granian, "heavy"))
            floor_cpu = asyncio.run(run_requests(granian, LISTS, liveness))
            order_cpu = asyncio.run(run_requests(granian, ORDERS, place))
            list_cpu = asyncio.run(run_requests(granian, LISTS, list_mine))
    print(f"first page, user with 10 orders:   median {ms(statistics.median(light))}, p95 {ms(p95(light))}")
    print(f"first page, user with {HEAVY_ORDERS} orders: median {ms(statistics.median(heavy))}, p95 {ms(p95(heavy))}")
    print(f"ratio heavy/light (median): {statistics.median(heavy) / statistics.median(light):.2f}")
    print(f"server CPU per GET /health/live (framework floor, no database): {ms(floor_cpu / LISTS)}")
    print(f"server CPU per POST /orders (2 products, concurrency {CONCURRENCY}): {ms(order_cpu / ORDERS)}")
    print(f"server CPU per GET /orders/me?limit=10 (concurrency {CONCURRENCY}): {ms(list_cpu / LISTS)}")


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


if __name__ == "__main__":
    sys.exit(main())
