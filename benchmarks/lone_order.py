"""What a lone order costs: one client placing orders one after another, this checkout against another, interleaved.

The wrk scenarios measure throughput under load, where orders share transactions; a lone order is
what a quiet shop sees. ``orders-service serve`` (1 worker) runs from both checkouts at once
against the same database; one client sends ``--orders`` orders to each, one after another and in
turns (1-3 random products, each with an Idempotency-Key, as docs/api.md asks; keep-alive
connections; after a warm-up), so that whatever else this shared machine does weighs on both
alike (runs one after the other differed by ±25 % here). It records the p50 and p99 latency the
client saw and each service's CPU per order, per round, in both modes: the machine's commits, and
1 ms commits (``commit_delay``, as on cloud storage). The medians over the rounds are printed as JSON.

    uv run python -m benchmarks.lone_order --against /path/to/other/checkout --orders 2000 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks import measure
from benchmarks.run import bench_database, realistic_commits
from benchmarks.seed import seed

WARM_UP = 200
Row = dict[str, float]


def drive(services: dict[str, measure.Served], orders: int, label: str) -> dict[str, Row]:
    """``orders`` sequential orders to each service, in turns; per service p50/p99 in ms and CPU in ms per order."""
    rng = random.Random(7)  # noqa: S311 - the same orders for every checkout, not a secret
    latencies: dict[str, list[float]] = {name: [] for name in services}
    names = list(services)
    with contextlib.ExitStack() as stack:
        clients = {
            name: stack.enter_context(httpx.Client(base_url=served.base_url, timeout=30))
            for name, served in services.items()
        }

        def one(number: int, record: bool) -> None:
            products = rng.sample(range(1, 1001), rng.randint(1, 3))
            body = {"items": [{"product_id": p, "qty": rng.randint(1, 3)} for p in products]}
            for name in names if number % 2 else names[::-1]:  # each goes first half of the time
                headers = {"X-User": f"lone-{number % 100}", "Idempotency-Key": f"{label}-{name}-{number}"}
                started = time.perf_counter()
                response = clients[name].post("/orders", json=body, headers=headers)
                if record:
                    latencies[name].append(time.perf_counter() - started)
                assert response.status_code == 200, response.text

        for number in range(WARM_UP):
            one(number, record=False)
        usage = {name: stack.enter_context(measure.usage_of(served.process.pid)) for name, served in services.items()}
        for number in range(orders):
            one(WARM_UP + number, record=True)
    rows = {}
    for name, values in latencies.items():
        values.sort()
        rows[name] = {
            "p50_ms": values[len(values) // 2] * 1000,
            "p99_ms": values[int(len(values) * 0.99)] * 1000,
            "cpu_ms_per_order": usage[name].cpu_seconds / orders * 1000,
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.lone_order", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--against", type=Path, required=True, help="another checkout of the service to compare")
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    checkouts = {"this": measure.PROJECT_ROOT, "other": args.against.resolve()}
    results: dict[str, dict[str, list[Row]]] = {}
    with bench_database() as database, tempfile.TemporaryDirectory(prefix="lone-order-") as logs:
        seed(database.admin)
        for mode in ("default", "1ms-commits"):
            results[mode] = {name: [] for name in checkouts}
            realistic = mode != "default"
            with realistic_commits(database.admin, database.runtime.db_name) if realistic else contextlib.nullcontext():
                for round_number in range(args.rounds):
                    with contextlib.ExitStack() as stack:
                        services = {
                            name: stack.enter_context(measure.product_from(source, database.runtime, 1, Path(logs)))
                            for name, source in checkouts.items()
                        }
                        rows = drive(services, args.orders, f"{mode}-{round_number}")
                    for name, row in rows.items():
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
