"""What a lone order costs: one client placing orders one after another, this checkout against another, alternated.

The wrk scenarios measure throughput under load, where orders share transactions; a lone order is
what a quiet shop sees. Each round starts ``orders-service serve`` (1 worker) from each checkout in
turn against the same database, sends ``--orders`` sequential orders (1-3 random products, each
with an Idempotency-Key, as docs/api.md asks) on one keep-alive connection after a warm-up, and
records the p50 latency the client saw and the service's CPU per order. Both modes: the machine's
commits, and 1 ms commits (``commit_delay``, as on cloud storage). The medians over the rounds
are printed as JSON.

    uv run python -m benchmarks.lone_order --against /path/to/other/checkout --orders 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import httpx

from benchmarks import measure
from benchmarks.run import bench_database, realistic_commits
from benchmarks.seed import seed

WARM_UP = 200


def drive(served: measure.Served, orders: int, label: str) -> dict[str, float]:
    """``orders`` sequential orders; p50/p99 in ms and the service's CPU in ms per order."""
    rng = random.Random(7)  # noqa: S311 - the same orders for every checkout, not a secret
    latencies: list[float] = []
    with httpx.Client(base_url=served.base_url, timeout=30) as client:

        def one(number: int, record: bool) -> None:
            products = rng.sample(range(1, 1001), rng.randint(1, 3))
            body = {"items": [{"product_id": p, "qty": rng.randint(1, 3)} for p in products]}
            headers = {"X-User": f"lone-{number % 100}", "Idempotency-Key": f"{label}-{number}-{rng.random()}"}
            started = time.perf_counter()
            response = client.post("/orders", json=body, headers=headers)
            if record:
                latencies.append(time.perf_counter() - started)
            assert response.status_code == 200, response.text

        for number in range(WARM_UP):
            one(number, record=False)
        with measure.usage_of(served.process.pid) as usage:
            for number in range(orders):
                one(WARM_UP + number, record=True)
    latencies.sort()
    return {
        "p50_ms": latencies[len(latencies) // 2] * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000,
        "cpu_ms_per_order": usage.cpu_seconds / orders * 1000,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.lone_order", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", type=Path, required=True, help="another checkout of the service to compare")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    checkouts = {"this": measure.PROJECT_ROOT, "other": args.against.resolve()}
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    with bench_database() as database, tempfile.TemporaryDirectory(prefix="lone-order-") as logs:
        seed(database.admin)
        for mode in ("default", "1ms-commits"):
            results[mode] = {name: [] for name in checkouts}
            commits = (
                realistic_commits(database.admin, database.runtime.db_name) if mode != "default" else nullcontext()
            )
            with commits:
                for round_number in range(args.rounds):
                    for name, source in checkouts.items():
                        with measure.product_from(source, database.runtime, 1, Path(logs)) as served:
                            row = drive(served, args.orders, f"{mode}-{name}-{round_number}")
                        results[mode][name].append(row)
                        print(json.dumps({"mode": mode, "checkout": name, "round": round_number, **row}), flush=True)
    summary: dict[str, Any] = {}
    for mode, by_checkout in results.items():
        medians = {
            name: {key: statistics.median(row[key] for row in rows) for key in rows[0]}
            for name, rows in by_checkout.items()
        }
        ratio = {key: medians["this"][key] / medians["other"][key] for key in medians["this"]}
        summary[mode] = {**medians, "this/other": ratio}
    print(json.dumps({"medians": summary, "orders": args.orders, "rounds": args.rounds}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
