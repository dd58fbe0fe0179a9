"""Database faults under load (real Granian, 2 workers, 64 clients retrying 503s with their Idempotency-Key).

Each test: backends terminated, a fast restart, a crash, a frozen network. Each asserts no 500
(every answer 200 or 503), every acknowledged order exists exactly once with its lines, nothing
else was written, stock is exact, and the service answers 200 again within 1 s of PostgreSQL
accepting connections. The figures are printed (pytest -s) for the record.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from orders_service.config import DEADLINE_MARGIN_SECONDS, Settings
from orders_service.db.engine import APPLICATION_NAME
from tests.support.database import ProvisionedDatabase, provisioned_database
from tests.support.disposable_postgres import DisposablePostgres, disposable_postgres
from tests.support.faults import LoadReport, OrderLoad, freezable_proxy, until_acknowledged, wait_until
from tests.support.granian import start_granian
from tests.support.scrape import Samples, requests_by_status, scrape, unavailable_by_cause

PRODUCTS = list(range(1, 21))
INITIAL_STOCK = 1_000_000
CLIENTS = 64
RECOVERY_BOUND = 1.0
STATEMENT_TIMEOUT_MS = 3000
READY_LINE = "database system is ready to accept connections"


@pytest.fixture(scope="module")
def fault_server() -> Iterator[DisposablePostgres]:
    with disposable_postgres() as server:
        yield server


@pytest.fixture(scope="module")
def fault_database(fault_server: DisposablePostgres) -> Iterator[ProvisionedDatabase]:
    with provisioned_database(fault_server.settings) as database:
        yield database


@pytest.fixture
def stocked(fault_database: ProvisionedDatabase) -> ProvisionedDatabase:
    admin = fault_database.admin
    with psycopg.connect(admin.conninfo, autocommit=True) as connection:
        connection.execute(
            f"TRUNCATE {admin.db_schema}.orders, {admin.db_schema}.order_items, "
            f"{admin.db_schema}.idempotency_keys, {admin.db_schema}.outbox, {admin.catalog_schema}.products"
        )
        connection.execute(
            f"INSERT INTO {admin.catalog_schema}.products (id, price_cents, stock) "
            "SELECT id, 100 * id, %s FROM unnest(%s::int[]) AS id",
            [INITIAL_STOCK, PRODUCTS],
        )
    return fault_database


def service_env(settings: Settings, **overrides: str) -> Settings:
    return Settings.from_env({**settings.as_env(), "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS), **overrides})


def assert_everything_acknowledged_exists_once(database: ProvisionedDatabase, report: LoadReport) -> None:
    admin = database.admin
    with psycopg.connect(admin.conninfo) as connection:
        orders = {
            order_id: (user_id, status)
            for order_id, user_id, status in connection.execute(
                f"SELECT id, user_id, status FROM {admin.db_schema}.orders"
            )
        }
        items: dict[int, dict[int, int]] = {}
        for order_id, product_id, qty in connection.execute(
            f"SELECT order_id, product_id, qty FROM {admin.db_schema}.order_items"
        ):
            items.setdefault(order_id, {})[product_id] = qty
        keys: dict[str, int] = dict(
            connection.execute(f"SELECT key, order_id FROM {admin.db_schema}.idempotency_keys").fetchall()
        )
        stock: dict[int, int] = dict(
            connection.execute(f"SELECT id, stock FROM {admin.catalog_schema}.products").fetchall()
        )
        events = connection.execute(f"SELECT order_id, type FROM {admin.db_schema}.outbox").fetchall()

    acknowledged = {order["id"]: (key, order) for key, order in report.acknowledged.items()}
    assert len(acknowledged) == len(report.acknowledged), "two keys were answered with the same order"
    assert set(orders) == set(acknowledged), "the database holds other orders than the acknowledged ones"
    for order_id, (key, order) in acknowledged.items():
        assert keys[key] == order_id
        expected_status = "cancelled" if order_id in report.cancelled else "placed"
        assert orders[order_id] == (order["user_id"], expected_status)
        assert items[order_id] == {line["product_id"]: line["qty"] for line in order["requested"]}
    # One event per committed change, none for what was rolled back or replayed.
    expected_events = [(order_id, "orders.order.placed") for order_id in acknowledged]
    expected_events += [(order_id, "orders.order.cancelled") for order_id in report.cancelled]
    assert sorted(events) == sorted(expected_events)
    sold: dict[int, int] = {}
    for order_id, lines in items.items():
        if order_id in report.cancelled:
            continue  # cancelled: its units went back
        for product_id, qty in lines.items():
            sold[product_id] = sold.get(product_id, 0) + qty
    assert stock == {product: INITIAL_STOCK - sold.get(product, 0) for product in PRODUCTS}


def assert_only_200_and_503(report: LoadReport) -> None:
    assert set(report.statuses) <= {200, 503}, report.summary()
    assert not report.transport_errors, report.summary()


def assert_metrics_count_what_was_sent(before: Samples, after: Samples, report: LoadReport) -> None:
    """/metrics counts each request under the status the client received (the load's requests only)."""
    counted = requests_by_status(after)
    counted.subtract(requests_by_status(before))
    assert +counted == report.statuses
    by_cause = unavailable_by_cause(after)
    by_cause.subtract(unavailable_by_cause(before))
    assert by_cause.total() == report.statuses[503]


def assert_recovered_after(report: LoadReport, accepting: float) -> tuple[float, float | None]:
    """Orders succeed, and 503s stop, within RECOVERY_BOUND of the database accepting connections again."""
    first = report.first_success_after(accepting)
    last_failure = report.last_failure()
    assert first is not None
    assert first - accepting <= RECOVERY_BOUND
    assert last_failure is None or last_failure - accepting <= RECOVERY_BOUND
    return first, last_failure


def record(name: str, report: LoadReport, **figures: Any) -> None:
    shown = ", ".join(
        f"{key} {value:.3f}s" if isinstance(value, float) else f"{key} {value}" for key, value in figures.items()
    )
    print(f"\n[fault: {name}] {report.summary()}; {shown}")


async def test_terminated_backends(stocked: ProvisionedDatabase, tmp_path: Path) -> None:
    with start_granian(service_env(stocked.runtime), workers=2, metrics_dir=tmp_path / "metrics") as server:
        load = OrderLoad(server.base_url, clients=CLIENTS, product_ids=PRODUCTS)
        before = scrape(server)
        load.start()
        await until_acknowledged(load, 200)
        terminated = 0
        for _ in range(3):
            with psycopg.connect(stocked.admin.conninfo, autocommit=True) as connection:
                terminated += len(
                    connection.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        [APPLICATION_NAME],
                    ).fetchall()
                )
            await until_acknowledged(load, 100)
        killed_at = time.monotonic()
        await until_acknowledged(load, 200)
        report = await load.stop()
        assert_metrics_count_what_was_sent(before, scrape(server), report)
    assert terminated > 0
    assert_only_200_and_503(report)
    assert_everything_acknowledged_exists_once(stocked, report)
    first = report.first_success_after(killed_at)
    assert first is not None
    assert first - killed_at <= RECOVERY_BOUND
    record("terminate backends", report, backends_terminated=terminated, first_200_after_last_kill=first - killed_at)


async def test_fast_restart(stocked: ProvisionedDatabase, fault_server: DisposablePostgres, tmp_path: Path) -> None:
    with start_granian(service_env(stocked.runtime), workers=2, metrics_dir=tmp_path / "metrics") as server:
        load = OrderLoad(server.base_url, clients=CLIENTS, product_ids=PRODUCTS)
        before = scrape(server)
        load.start()
        await until_acknowledged(load, 200)
        began = time.monotonic()
        await asyncio.to_thread(fault_server.restart)  # pg_ctl -w: returns once it accepts connections
        accepting = time.monotonic()
        await until_acknowledged(load, 300)
        report = await load.stop()
        assert_metrics_count_what_was_sent(before, scrape(server), report)
    assert_only_200_and_503(report)
    assert_everything_acknowledged_exists_once(stocked, report)
    first, last_failure = assert_recovered_after(report, accepting)
    record(
        "fast restart",
        report,
        restart_took=accepting - began,
        first_200_after_accepting=first - accepting,
        last_failure_after_accepting=(last_failure - accepting) if last_failure else 0.0,
    )


async def test_crash(stocked: ProvisionedDatabase, fault_server: DisposablePostgres, tmp_path: Path) -> None:
    """SIGKILL of one backend: the postmaster resets every connection and recovers from WAL."""
    with start_granian(service_env(stocked.runtime), workers=2, metrics_dir=tmp_path / "metrics") as server:
        load = OrderLoad(server.base_url, clients=CLIENTS, product_ids=PRODUCTS)
        before = scrape(server)
        load.start()
        await until_acknowledged(load, 200)
        ready_lines = fault_server.log.read_text().count(READY_LINE)
        fault_server.crash_a_backend(APPLICATION_NAME)
        accepting = await wait_until(
            lambda: fault_server.log.read_text().count(READY_LINE) > ready_lines, 30, "recovery after the crash"
        )
        await until_acknowledged(load, 300)
        report = await load.stop()
        assert_metrics_count_what_was_sent(before, scrape(server), report)
    assert_only_200_and_503(report)
    assert_everything_acknowledged_exists_once(stocked, report)
    first, last_failure = assert_recovered_after(report, accepting)
    record(
        "crash",
        report,
        first_200_after_accepting=first - accepting,
        last_failure_after_accepting=(last_failure - accepting) if last_failure else 0.0,
    )


async def test_frozen_network(stocked: ProvisionedDatabase, fault_server: DisposablePostgres, tmp_path: Path) -> None:
    """Packets stop flowing both ways, no error anywhere: only the service's own deadlines end the waits."""
    freeze_for = 8.0
    with freezable_proxy(fault_server.socket_path) as proxy:
        through_proxy = service_env(stocked.runtime, DB_HOST="127.0.0.1", DB_PORT=str(proxy.port), DB_POOL_TIMEOUT="3")
        with start_granian(through_proxy, workers=2, metrics_dir=tmp_path / "metrics") as server:
            load = OrderLoad(server.base_url, clients=CLIENTS, product_ids=PRODUCTS)
            before = scrape(server)
            load.start()
            await until_acknowledged(load, 200)
            frozen = time.monotonic()
            proxy.freeze()
            await asyncio.sleep(freeze_for)  # the fault lasts this long: nothing to wait for
            proxy.thaw()
            thawed = time.monotonic()
            await until_acknowledged(load, 300)
            report = await load.stop()
            assert_metrics_count_what_was_sent(before, scrape(server), report)
    assert_only_200_and_503(report)
    assert_everything_acknowledged_exists_once(stocked, report)
    bound = STATEMENT_TIMEOUT_MS / 1000 + DEADLINE_MARGIN_SECONDS + 1  # 1 s for the answer to travel
    slowest = report.slowest(frozen, thawed)
    assert slowest <= bound, f"a request waited {slowest:.1f}s with the network frozen"
    first = report.first_success_after(thawed)
    assert first is not None
    assert first - thawed <= RECOVERY_BOUND
    # Connection attempts held during the freeze flow again or end at connect_timeout: nothing sent
    # after the thaw waits longer.
    slowest_after = report.slowest(thawed, math.inf)
    assert slowest_after <= through_proxy.db_connect_timeout, (
        f"a request sent after the thaw waited {slowest_after:.1f}s"
    )
    failures_during = sum(1 for sent, _, status in report.answers if status == 503 and frozen <= sent <= thawed)
    assert failures_during > 0  # the freeze was felt
    record(
        "frozen network",
        report,
        frozen_for=thawed - frozen,
        slowest_answer_while_frozen=slowest,
        first_200_after_thaw=first - thawed,
        slowest_answer_after_thaw=slowest_after,
    )
