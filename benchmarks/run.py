"""The benchmark: the Orders service against its floor (a bare app) and its ceiling (pgbench), in one run.

    uv run python -m benchmarks.run                            # everything, about 12 minutes
    uv run python -m benchmarks.run --workers 1 --duration 5   # a quick look
    uv run python -m benchmarks.run --only-events --duration 5 # create with events on vs off only
    uv run python -m benchmarks.run --only-auth --auth jwt-es256,jwt-rs256,jwt-hs256 --workers 2 \
        --scenarios create,list                                # what verifying signed tokens costs

Then again with every commit taking 1 ms (``realistic_commits``, as on cloud block storage): create,
hot and mixed for the product, the floor and the ceiling, at the most workers measured.

Needs wrk and pgbench (Debian's ``wrk`` and ``postgresql-client``; PgBouncer for the pooler
variant). The database: ``BENCH_DATABASE_URL`` or ``TEST_DATABASE_URL`` (a server it may
create databases on), else an embedded PostgreSQL. Writes ``benchmarks/results/latest.json``,
``docs/benchmarks.png`` and ``docs/benchmarks.md``. Compare ratios from one run, never
absolute figures across runs: the service, PostgreSQL and wrk share the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg

from benchmarks import ceiling, measure, report, tokens
from benchmarks.seed import HEAVY_USER, LIGHT_USER, Seeded, check_invariants, count_orders, seed
from orders_service.config import Settings
from tests.support.database import ProvisionedDatabase, postgres_server, provisioned_database
from tests.support.otlp_sink import otlp_sink
from tests.support.pgbouncer import pgbouncer, plain_binary

RESULTS = Path(__file__).resolve().parent / "results" / "latest.json"
SCENARIOS = ("create", "hot", "list", "mixed")
CREATES = {"create", "hot"}


@dataclass
class Row:
    """One measured run: what, on which target, how fast, what it cost."""

    scenario: str
    target: str  # product, floor, ceiling
    workers: int
    variant: str = ""
    req_s: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    non_2xx: int = 0
    socket_errors: int = 0
    cpu_ms_per_request: float | None = None
    peak_rss_mb_per_process: float | None = None
    peak_rss_mb_tree: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Bench:
    database: ProvisionedDatabase
    seeded: Seeded
    connections: int
    duration: int
    log_dir: Path
    rows: list[Row] = field(default_factory=list)
    invariants: dict[str, bool] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        """What the product and the floor connect as: the least-privilege runtime role (print-grants)."""
        return self.database.runtime

    def until_quiet(self, interval: float = 0.3) -> None:
        """Until no order has been added for ``interval`` seconds."""
        last = -1
        while (count := count_orders(self.database.admin, self.seeded)) != last:
            last = count
            time.sleep(interval)  # polling the database for the service to finish what wrk left in flight

    def checkpoint(self) -> None:
        """Start each measured run from a clean slate: no checkpoint of the previous run's writes in the middle."""
        with psycopg.connect(self.database.admin.conninfo, autocommit=True) as connection:
            connection.execute("CHECKPOINT")

    def drive(
        self,
        served: measure.Served,
        scenario: str,
        target: str,
        workers: int,
        *,
        variant: str = "",
        script_args: list[str] | None = None,
        connections: int | None = None,
        seconds: float | None = None,
        wrk_env: dict[str, str] | None = None,
    ) -> Row:
        script = {"create": "create.lua", "hot": "hot.lua", "list": "list.lua", "mixed": "mixed.lua"}[scenario]
        self.checkpoint()
        orders_before, created_before = count_orders(self.database.admin, self.seeded), measure.orders_created(served)
        with measure.usage_of(served.process.pid) as usage:
            summary = measure.wrk(
                served.base_url,
                script,
                script_args or [],
                connections=connections or self.connections,
                seconds=seconds or self.duration,
                env=wrk_env,
            )
        requests = int(summary["requests"])
        row = Row(
            scenario,
            target,
            workers,
            variant,
            req_s=round(requests / summary["duration_s"], 1),
            p50_ms=summary["p50_ms"],
            p90_ms=summary["p90_ms"],
            p99_ms=summary["p99_ms"],
            max_ms=summary["max_ms"],
            non_2xx=int(summary["non_2xx"]),
            socket_errors=int(summary["socket_errors"]),
            cpu_ms_per_request=round(usage.cpu_seconds / max(requests, 1) * 1000, 3),
            peak_rss_mb_per_process=round(usage.peak_rss_mb_per_process, 1),
            peak_rss_mb_tree=round(usage.peak_rss_mb_tree, 1),
        )
        if scenario != "list":
            answered = requests - row.non_2xx if scenario in CREATES else int(summary["placed"])
            self.until_quiet()  # requests still in the service when wrk stopped (e.g. queued for a hot product)
            created_after = measure.orders_created(served)
            checks = check_invariants(
                self.database.admin,
                self.seeded,
                new_orders=count_orders(self.database.admin, self.seeded) - orders_before,
                answered=answered,
                in_flight=connections or self.connections,
                counted=None if created_before is None or created_after is None else created_after - created_before,
            )
            row.extra["invariants"] = checks
            for name, holds in checks.items():
                self.invariants[name] = self.invariants.get(name, True) and holds
        self.rows.append(row)
        print(
            f"{target:8} {scenario:7} w={workers} {variant:20} {row.req_s:8.1f} req/s  p50 {row.p50_ms:6.2f}  "
            f"p99 {row.p99_ms:7.2f} ms  non-2xx {row.non_2xx}  cpu {row.cpu_ms_per_request} ms/req  "
            f"rss {row.peak_rss_mb_per_process} MB",
            flush=True,
        )
        return row

    def warm_up(
        self, served: measure.Served, workers: int, scenarios: tuple[str, ...], wrk_env: dict[str, str] | None = None
    ) -> None:
        """Open every pooled connection and prepare the statements before anything is measured."""
        for scenario in scenarios:
            script = {"create": "create.lua", "hot": "hot.lua", "list": "list.lua", "mixed": "mixed.lua"}[scenario]
            measure.wrk(served.base_url, script, [], connections=self.connections, seconds=2, env=wrk_env)


REALISTIC_COMMIT = report.REALISTIC_COMMIT
REALISTIC_SCENARIOS = ("create", "hot", "mixed")


@contextlib.contextmanager
def realistic_commits(admin: Settings, db_name: str) -> Iterator[None]:
    """Every commit in ``db_name`` flushes its WAL after 1 ms, as on cloud block storage (this machine's disk
    takes ~0.05 ms): ``commit_delay`` 1000 us with ``commit_siblings`` 0, for the sessions opened meanwhile."""
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        for setting, value in (("commit_delay", 1000), ("commit_siblings", 0)):
            connection.execute(f'ALTER DATABASE "{db_name}" SET {setting} = {value}')
    try:
        yield
    finally:
        with psycopg.connect(admin.conninfo, autocommit=True) as connection:
            for setting in ("commit_delay", "commit_siblings"):
                connection.execute(f'ALTER DATABASE "{db_name}" RESET {setting}')


def run_realistic_commit(bench: Bench, workers: int, scenarios: tuple[str, ...]) -> None:
    """Product, floor and ceiling again with 1 ms commits (``realistic_commits``): what storage like production's
    does to each, measured in the same run as the default mode."""
    with (
        realistic_commits(bench.database.admin, bench.settings.db_name),
        measure.product(bench.settings, workers, bench.log_dir) as product,
        measure.floor(bench.settings, workers, bench.log_dir) as floor,
    ):
        bench.warm_up(product, workers, scenarios)
        bench.warm_up(floor, workers, scenarios)
        for scenario in scenarios:
            bench.drive(product, scenario, "product", workers, variant=REALISTIC_COMMIT)
            bench.drive(floor, scenario, "floor", workers, variant=REALISTIC_COMMIT)
    run_ceiling(bench, scenarios, variant=REALISTIC_COMMIT)


def run_ceiling(bench: Bench, scenarios: tuple[str, ...], *, variant: str = "") -> None:
    """pgbench on a copy of the database (its writes do not touch the tables the services use)."""
    pgbench = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    copy = f"{bench.settings.db_name}_ceiling"
    admin = Settings.from_env({**bench.database.admin.as_env(), "DB_NAME": "postgres"})
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{copy}" TEMPLATE "{bench.settings.db_name}"')
    try:
        # The runtime role, as the service: its role defaults hold the timeouts the scripts also set.
        target = Settings.from_env({**bench.settings.as_env(), "DB_NAME": copy})
        mode = realistic_commits(admin, copy) if variant == REALISTIC_COMMIT else contextlib.nullcontext()
        # Beside hot's: the flash-sale references (one bare decrement per transaction; ten orders per transaction).
        references = tuple(ceiling.FLASH_SALE_REFERENCES) if "hot" in scenarios else ()
        with mode:
            rows = [
                (
                    scenario,
                    ceiling.run_pgbench(pgbench, target, scenario, clients=bench.connections, seconds=bench.duration),
                )
                for scenario in (*scenarios, *references)
            ]
        for scenario, figures in rows:
            row = Row(scenario, "ceiling", 0, variant=variant, non_2xx=int(figures["non_2xx"]))
            per_transaction = ceiling.FLASH_SALE_REFERENCES.get(scenario, 1)
            row.extra["orders_per_transaction"] = per_transaction
            row.req_s, row.p50_ms, row.p90_ms = figures["req_s"] * per_transaction, figures["p50_ms"], figures["p90_ms"]
            row.p99_ms, row.max_ms = figures["p99_ms"], figures["max_ms"]
            bench.rows.append(row)
            unit = "orders/s" if per_transaction > 1 else "tx/s"
            print(
                f"ceiling  {scenario:7} {variant:20} {row.req_s:8.1f} {unit}  p50 {row.p50_ms:6.2f}  "
                f"p99 {row.p99_ms:7.2f} ms",
                flush=True,
            )
    finally:
        with psycopg.connect(admin.conninfo, autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{copy}" WITH (FORCE)')


def run_targets(bench: Bench, workers: int, scenarios: tuple[str, ...], alternations: int = 1) -> None:
    """Product and floor run side by side (the idle one costs nothing) and are driven back to back,
    scenario by scenario, so that both meet the same database and the same machine; ``alternations`` times in
    turn (product, floor, product, floor …), as this machine's speed drifts within a run."""
    with (
        measure.product(bench.settings, workers, bench.log_dir) as product,
        measure.floor(bench.settings, workers, bench.log_dir) as floor,
    ):
        bench.warm_up(product, workers, scenarios)
        bench.warm_up(floor, workers, scenarios)
        for scenario in scenarios:
            for _ in range(alternations):
                bench.drive(product, scenario, "product", workers)
                bench.drive(floor, scenario, "floor", workers)


def run_auth(
    bench: Bench, workers: int, scenarios: tuple[str, ...], modes: tuple[str, ...], alternations: int = 1
) -> None:
    """What verifying the Gateway's signed tokens costs (AUTH_MODE=jwt, keys from a JWKS file, a token per user made
    before the run): the product with each algorithm and on X-User, started in turn, and the floor (X-User, as
    ever) driven between them, ``alternations`` times."""
    identities = {mode: tokens.signed_identity(mode, bench.log_dir) for mode in modes}
    with measure.floor(bench.settings, workers, bench.log_dir) as floor:
        bench.warm_up(floor, workers, scenarios)
        for _ in range(alternations):
            for mode in (report.X_USER, *modes):
                identity = identities.get(mode)
                overrides = identity.settings if identity else {}
                wrk_env = {"BENCH_TOKENS": str(identity.token_file)} if identity else None
                with measure.product(bench.settings, workers, bench.log_dir, **overrides) as product:
                    bench.warm_up(product, workers, scenarios, wrk_env)
                    for scenario in scenarios:
                        variant = f"{report.AUTH_VARIANT} {mode}"
                        bench.drive(product, scenario, "product", workers, variant=variant, wrk_env=wrk_env)
            for scenario in scenarios:
                bench.drive(floor, scenario, "floor", workers, variant=f"{report.AUTH_VARIANT} floor")


def run_variants(bench: Bench, scenarios: tuple[str, ...]) -> None:
    """One worker: prepared statements off; timeouts sent with every transaction (the role does not set
    the configured ones); through PgBouncer (transaction mode), as a pooler costs; tracing on."""
    for variant, overrides in (
        ("prepared statements off", {"DB_PREPARED_STATEMENTS": "false"}),
        ("timeouts sent per transaction", {"DB_LOCK_TIMEOUT_MS": "5001"}),
    ):
        with measure.product(bench.settings, 1, bench.log_dir, **overrides) as served:
            bench.warm_up(served, 1, scenarios)
            for scenario in scenarios:
                bench.drive(served, scenario, "product", 1, variant=variant)
    binary = plain_binary()
    if binary is None:
        print("pgbouncer not installed: no pooler figures", flush=True)
    else:
        with (
            pgbouncer(binary, bench.settings, [bench.settings], prepared=False) as pooled,
            measure.product(pooled, 1, bench.log_dir) as served,
        ):
            bench.warm_up(served, 1, scenarios)
            for scenario in scenarios:
                bench.drive(served, scenario, "product", 1, variant="through PgBouncer")
    run_tracing(bench, tuple(scenario for scenario in scenarios if scenario in {"create", "list"}))


def run_tracing(bench: Bench, scenarios: tuple[str, ...]) -> None:
    """One worker with OpenTelemetry on, every request sampled, its spans exported over OTLP/HTTP to a sink that
    answers 200 (in this process, outside the measured process tree): what tracing costs the service."""
    with (
        otlp_sink() as sink,
        measure.product(
            bench.settings, 1, bench.log_dir, OTEL_SDK_DISABLED="false", OTEL_EXPORTER_OTLP_ENDPOINT=sink.endpoint
        ) as served,
    ):
        bench.warm_up(served, 1, scenarios)
        for scenario in scenarios:
            exports_before = sink.requests
            row = bench.drive(served, scenario, "product", 1, variant=report.TRACING_VARIANT)
            row.extra["otlp_export_requests"] = sink.requests - exports_before


EVENTS_OFF, EVENTS_ON = "events off", "events on"


def run_events(bench: Bench, rounds: int = 2) -> None:
    """1 worker, create: AMQP_URL unset (events stay in the outbox) against the relay in serve publishing to
    RabbitMQ (an exchange and a durable queue of this run's own), alternated to share the machine's drift."""
    import asyncio  # noqa: PLC0415

    import aio_pika  # noqa: PLC0415

    url = os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    name = f"orders-bench-{uuid.uuid4().hex[:8]}"

    async def declare() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
            # A consumer's queue, as in production; bounded so that the run cannot fill the disk.
            queue = await channel.declare_queue(name, durable=True, arguments={"x-max-length": 200_000})
            await queue.bind(exchange, routing_key="orders.order.#")

    async def remove() -> None:
        connection = await aio_pika.connect(url, timeout=5)
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(name)
            await channel.exchange_delete(name)

    try:
        asyncio.run(declare())
    except Exception as exc:  # noqa: BLE001 - no broker: no events figures
        print(f"RabbitMQ does not answer at {url} ({exc}): no events figures", flush=True)
        return
    try:
        for _ in range(rounds):
            for variant, overrides in ((EVENTS_OFF, {}), (EVENTS_ON, {"AMQP_URL": url, "EVENTS_EXCHANGE": name})):
                since = skip_backlog(bench)  # what earlier runs left in the outbox is not this run's work
                with measure.product(bench.settings, 1, bench.log_dir, **overrides) as served:
                    bench.warm_up(served, 1, ("create",))
                    broker_before = broker_cpu_seconds()
                    row = bench.drive(served, "create", "product", 1, variant=variant)
                    broker_used = broker_cpu_seconds() - broker_before
                    requests = row.req_s * bench.duration
                    row.extra["broker_cpu_ms_per_request"] = round(broker_used / max(requests, 1) * 1000, 3)
                    if variant == EVENTS_ON:
                        row.extra["events"] = {**events_backlog(bench), **event_latency(bench, since)}
    finally:
        asyncio.run(remove())


def broker_cpu_seconds() -> float:
    """CPU used so far by the RabbitMQ server on this machine (Erlang's beam.smp), 0 when none is found."""
    import psutil  # noqa: PLC0415

    total = 0.0
    for process in psutil.process_iter(["name"]):
        if process.info["name"] and process.info["name"].startswith("beam"):
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                total += times.user + times.system
    return total


def skip_backlog(bench: Bench) -> datetime:
    """Mark what earlier runs left pending as published; the database's time from which this run's events count."""
    schema = bench.database.admin.db_schema
    with psycopg.connect(bench.database.admin.conninfo, autocommit=True) as connection:
        connection.execute(f"UPDATE {schema}.outbox SET published_at = now() WHERE published_at IS NULL")
        return connection.execute("SELECT clock_timestamp()").fetchone()[0]  # type: ignore[index,no-any-return]


def event_latency(bench: Bench, since: datetime) -> dict[str, float]:
    """From the order's transaction to the event marked published (after the broker's confirm): p50, p99, max in ms.

    ``occurred_at`` is the transaction's start, a little before its commit; marking may trail the
    confirm by a cycle under load: both make these figures upper bounds."""
    schema = bench.database.admin.db_schema
    query = (
        "SELECT percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY ms), max(ms) FROM"
        f" (SELECT extract(epoch FROM published_at - occurred_at) * 1000 AS ms FROM {schema}.outbox"
        "  WHERE occurred_at >= %s AND published_at IS NOT NULL) AS latency"
    )
    with psycopg.connect(bench.database.admin.conninfo, autocommit=True) as connection:
        (p50, p99), most = connection.execute(query, [since]).fetchone()  # type: ignore[misc]
    # extract() gives numeric (Decimal), which JSON does not take.
    return {
        "latency_p50_ms": round(float(p50), 1),
        "latency_p99_ms": round(float(p99), 1),
        "latency_max_ms": round(float(most), 1),
    }


def events_backlog(bench: Bench, within: float = 60.0) -> dict[str, float]:
    """How far behind the relay was when wrk stopped, and how long it took to publish the rest."""
    schema = bench.database.admin.db_schema
    query = f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"
    with psycopg.connect(bench.database.admin.conninfo, autocommit=True) as connection:
        started = time.monotonic()
        backlog = int(connection.execute(query).fetchone()[0])  # type: ignore[index]
        remaining = backlog
        while remaining and time.monotonic() - started < within:
            time.sleep(0.1)  # polling the outbox for the relay to catch up
            remaining = int(connection.execute(query).fetchone()[0])  # type: ignore[index]
        return {"pending_at_end": backlog, "drained_in_s": round(time.monotonic() - started, 2), "left": remaining}


def run_growth(bench: Bench) -> None:
    """The cost as the work grows: orders of 1, 10, 100 lines; a first page of 10 orders against one of 100,000."""
    seconds, connections = max(3, bench.duration // 3), 4
    with measure.product(bench.settings, 1, bench.log_dir) as served:
        bench.warm_up(served, 1, ("create", "list"))
        for lines in (1, 10, 100):
            bench.drive(
                served,
                "create",
                "product",
                1,
                variant=f"{lines} lines per order",
                script_args=["1000", str(lines)],
                connections=connections,
                seconds=seconds,
            )
        for user in (LIGHT_USER, HEAVY_USER):
            bench.drive(
                served,
                "list",
                "product",
                1,
                variant=f"first page of {user}",
                script_args=["1000", user],
                connections=connections,
                seconds=seconds,
            )


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = "unknown"
    with contextlib.suppress(OSError):
        memory = Path("/proc/meminfo").read_text().splitlines()[0].split(":", 1)[1].strip()
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


@contextlib.contextmanager
def bench_database() -> Iterator[ProvisionedDatabase]:
    """A scratch database set up as in production (tests/support/database.py): migrated by its owner, served to a
    least-privilege runtime role that holds the timeouts as its defaults (print-grants)."""
    if url := os.environ.get("BENCH_DATABASE_URL"):
        os.environ["TEST_DATABASE_URL"] = url
    with postgres_server() as server, provisioned_database(server) as database:
        yield database


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="benchmarks.run", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--workers", default="1,2", help="Granian workers to measure (comma-separated)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--duration", type=int, default=12, help="seconds per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--no-variants", action="store_true", help="skip the 1-worker variants (PgBouncer, tracing …)")
    parser.add_argument("--no-growth", action="store_true", help="skip the cost-as-the-work-grows runs")
    parser.add_argument("--no-events", action="store_true", help="skip create with events on vs off (RabbitMQ)")
    parser.add_argument("--only-events", action="store_true", help="only create with events on vs off")
    parser.add_argument(
        "--no-realistic-commit", action="store_true", help="skip the runs with 1 ms commits (as on cloud storage)"
    )
    parser.add_argument(
        "--auth",
        default="",
        help=f"also measure AUTH_MODE=jwt with these ({','.join(tokens.AUTH_MODES)}), at the most workers measured",
    )
    parser.add_argument("--only-auth", action="store_true", help="only the --auth runs (and X-User, and the floor)")
    parser.add_argument("--output", type=Path, default=None, help=f"default {RESULTS} (none with --only-events)")
    parser.add_argument("--report", default="benchmarks", help="write docs/<REPORT>.md and docs/<REPORT>.png")
    parser.add_argument(
        "--alternations", type=int, default=1, help="drive product and floor in turn this many times per scenario"
    )
    args = parser.parse_args(argv)
    args.auth_modes = tuple(mode for mode in args.auth.split(",") if mode)
    if set(args.auth_modes) - set(tokens.AUTH_MODES) or (args.only_auth and not args.auth_modes):
        parser.error(f"--auth takes {','.join(tokens.AUTH_MODES)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    scenarios = tuple(args.scenarios.split(","))
    auth_modes: tuple[str, ...] = args.auth_modes
    most_workers = max(int(w) for w in args.workers.split(","))
    started = time.time()
    with bench_database() as database, tempfile.TemporaryDirectory(prefix="orders-bench-") as directory:
        print(f"seeding {database.admin.db_name} …", flush=True)
        seeded = seed(database.admin)
        bench = Bench(database, seeded, args.connections, args.duration, Path(directory))
        with psycopg.connect(database.admin.conninfo) as connection:
            server_version = connection.execute("SHOW server_version").fetchone()
        if args.only_auth:
            run_auth(bench, most_workers, scenarios, auth_modes, args.alternations)
        elif not args.only_events:
            for workers in (int(w) for w in args.workers.split(",")):
                run_targets(bench, workers, scenarios, args.alternations)
            if not args.no_variants:
                run_variants(bench, scenarios)
            if not args.no_growth:
                run_growth(bench)
            if auth_modes:
                run_auth(bench, most_workers, scenarios, auth_modes, args.alternations)
        if not args.no_events and not args.only_auth:
            run_events(bench)
        if not args.only_events and not args.only_auth:
            run_ceiling(bench, scenarios)
            if not args.no_realistic_commit:
                realistic = tuple(scenario for scenario in scenarios if scenario in REALISTIC_SCENARIOS)
                run_realistic_commit(bench, max(int(w) for w in args.workers.split(",")), realistic)
    results = {
        "run_id": uuid.uuid4().hex[:8],
        "command": " ".join(["python -m benchmarks.run", *(sys.argv[1:] if argv is None else argv)]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)),
        "took_s": round(time.time() - started),
        "machine": {**machine(), "postgresql": server_version[0] if server_version else "?"},
        "settings": {"connections": args.connections, "duration_s": args.duration, "wrk_threads": 1},
        "invariants": bench.invariants,
        "rows": [asdict(row) for row in bench.rows],
    }
    if args.only_events or args.only_auth:  # a partial run: the committed results stay
        part = report.auth if args.only_auth else report.events
        print("\n".join(part([asdict(row) for row in bench.rows])), flush=True)
        if args.output:
            args.output.write_text(json.dumps(results, indent=1) + "\n")
        return 0 if all(bench.invariants.values()) else 1
    output = args.output or RESULTS
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=1) + "\n")
    report.write(results, args.report)
    print(f"results: {output}, docs/{args.report}.md, docs/{args.report}.png", flush=True)
    return 0 if all(bench.invariants.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
