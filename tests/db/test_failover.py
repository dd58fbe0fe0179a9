"""Failover under load: the primary crashes and its synchronous standby is promoted (real Granian, 2 workers,
32 clients placing orders of 1-3 products with an Idempotency-Key, retrying 503s and dropped connections with it).

Three ways the service finds the new primary: a name (a DNS name, a VIP) moved to it after the promotion; the name
moved to the standby before its promotion (the service meets a standby for a few seconds: 503, never 500, and
readiness not ready); both nodes in ``DB_HOST`` (libpq tries them in turn and keeps the one that takes writes).

Each asserts: every answer 200 or 503, and no 503 to a request sent once a primary is reachable; every
acknowledged order is on the promoted node exactly once with its key, lines, status and events, nothing else was
written, stock is exact; an order answered 200 within 5 s of the promotion; readiness 503 while no primary is
reachable, 200 after; the same service processes throughout (no restart); orders flowing after. The figures are
printed (pytest -s) for the record. Each test makes its own pair (the failover uses it up): 2-5 s of set-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from orders_service.config import Settings
from orders_service.db.readiness_probe import REUSE_SECONDS
from tests.support.database import ProvisionedDatabase
from tests.support.faults import LoadReport, OrderLoad, wait_until
from tests.support.granian import GranianServer, start_granian
from tests.support.replication import Node, ReplicatedPostgres, replicated_postgres

PRODUCTS = list(range(1, 21))
INITIAL_STOCK = 1_000_000
CLIENTS = 32
WORKERS = 2
RECOVERY_BOUND = 5.0  # seconds from the promotion to an order answered 200
UNPROMOTED_FOR = 2.5  # seconds the name points at the standby before its promotion
STATEMENT_TIMEOUT_MS = 3000
PROBE_INTERVAL = 0.05
ORDERS_BEFORE, ORDERS_AFTER = 200, 200


@pytest.fixture
def pair() -> Iterator[ReplicatedPostgres]:
    with replicated_postgres(synchronous=True) as pair:
        yield pair


@pytest.fixture
def stocked(pair: ReplicatedPostgres) -> Iterator[ProvisionedDatabase]:
    """The migrated database on the pair (through the name), with PRODUCTS in stock."""
    with pair.provisioned() as database:
        pair.add_products(database, PRODUCTS, INITIAL_STOCK)
        yield database


def service_env(database: ProvisionedDatabase, **overrides: str) -> Settings:
    return Settings.from_env(
        {**database.runtime.as_env(), "DB_STATEMENT_TIMEOUT_MS": str(STATEMENT_TIMEOUT_MS), **overrides}
    )


@dataclass
class Probe:
    sent: float
    answered: float
    status: int
    reason: str


@dataclass
class ReadinessWatch:
    """Probes readiness (``GET /health``) every PROBE_INTERVAL, each probe on a new connection (either worker)."""

    base_url: str
    probes: list[Probe] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> list[Probe]:
        """The probes so far; raises what made probing fail, if anything did."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return self.probes

    async def _run(self) -> None:
        while True:
            sent = time.monotonic()
            async with httpx.AsyncClient(base_url=self.base_url, timeout=30) as client:
                response = await client.get("/health")
            self.probes.append(Probe(sent, time.monotonic(), response.status_code, response.json().get("reason", "")))
            await asyncio.sleep(PROBE_INTERVAL)  # the probing period


@dataclass
class Failover:
    """When each step happened (``time.monotonic()``)."""

    crash: tuple[float, float]  # the primary's processes SIGKILLed, and every one of them gone
    promotion: tuple[float, float]  # promote() called, and returned (the standby then accepts writes)
    moved: float | None = None  # the name moved to the standby

    @property
    def crashed(self) -> float:
        return self.crash[0]

    @property
    def promoted(self) -> float:
        return self.promotion[1]

    @property
    def primary_reachable(self) -> float:
        """From when the service surely reaches a primary: the promotion, or the name's move if later."""
        return max(self.promoted, self.moved or self.promoted)

    @property
    def no_primary_until(self) -> float:
        """Until when the service surely reaches no primary: the start of the promotion (``pg_ctl promote -w``
        returns up to a tenth of a second after it completed), or the name's move if later."""
        return max(self.promotion[0], self.moved or self.promotion[0])


@dataclass
class Outcome:
    report: LoadReport
    failover: Failover
    probes: list[Probe]


def service_processes(server: GranianServer) -> set[tuple[int, float]]:
    """Granian's main process and its workers, as (pid, start time): a restarted worker is a new entry."""
    main = psutil.Process(server.process.pid)
    return {(process.pid, process.create_time()) for process in [main, *main.children(recursive=True)]}


def bad_statuses(report: LoadReport) -> Counter[int]:
    return Counter({status: count for status, count in report.statuses.items() if status not in {200, 503}})


async def until_more_acknowledged(report: LoadReport, count: int, within: float = 30.0) -> None:
    """Until ``count`` more orders are acknowledged; stops early at any status but 200 and 503 (a client that
    gets one stops: the load would never get there)."""
    target = len(report.acknowledged) + count
    await wait_until(
        lambda: len(report.acknowledged) >= target or bool(bad_statuses(report)), within, f"{count} more orders"
    )
    bad = bad_statuses(report)
    assert not bad, f"answered {dict(bad)}: {report.summary()}"


async def under_load(settings: Settings, tmp_path: Path, fail_over: Callable[[], Awaitable[Failover]]) -> Outcome:
    """The service under load; ``fail_over`` once orders flow; until orders flow again. The service must have
    kept the same processes (no restart, no worker replaced)."""
    with start_granian(settings, workers=WORKERS, metrics_dir=tmp_path / "metrics") as server:
        processes = service_processes(server)
        load = OrderLoad(server.base_url, clients=CLIENTS, product_ids=PRODUCTS)
        readiness = ReadinessWatch(server.base_url)
        load.start()
        readiness.start()
        try:
            await until_more_acknowledged(load.report, ORDERS_BEFORE)
            failover = await fail_over()
            await until_more_acknowledged(load.report, ORDERS_AFTER)
        finally:
            probes = await readiness.stop()
            report = await load.stop()
        assert server.process.poll() is None, "the service exited"
        assert service_processes(server) == processes, "a service process was restarted"
    return Outcome(report, failover, probes)


async def kill_primary(pair: ReplicatedPostgres) -> tuple[float, float]:
    """(SIGKILL sent, every process of the primary gone)."""
    started = time.monotonic()
    await asyncio.to_thread(pair.kill_primary)
    return started, time.monotonic()


async def promote(pair: ReplicatedPostgres) -> tuple[float, float]:
    """(called, returned): the standby became a primary in between."""
    called = time.monotonic()
    await asyncio.to_thread(pair.promote)
    return called, time.monotonic()


async def move_name_to_standby(pair: ReplicatedPostgres) -> float:
    await asyncio.to_thread(pair.move_name, pair.standby, cut=True)
    return time.monotonic()


def assert_acknowledged_orders_exactly_on(node: Node, database: ProvisionedDatabase, report: LoadReport) -> None:
    """The promoted node holds every acknowledged order once (its key, lines, status and events), nothing else,
    and each product's stock is the initial one less the units of its orders that were not cancelled."""
    admin = database.admin
    with node.connect(admin.db_name) as connection:
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
        keys: dict[tuple[str, str], int] = {
            (user_id, key): order_id
            for user_id, key, order_id in connection.execute(
                f"SELECT user_id, key, order_id FROM {admin.db_schema}.idempotency_keys"
            )
        }
        stock: dict[int, int] = dict(
            connection.execute(f"SELECT id, stock FROM {admin.catalog_schema}.products").fetchall()
        )
        events = connection.execute(f"SELECT order_id, type FROM {admin.db_schema}.outbox").fetchall()

    acknowledged = {order["id"]: (key, order) for key, order in report.acknowledged.items()}
    assert len(acknowledged) == len(report.acknowledged), "two keys were answered with the same order"
    lost = sorted(set(acknowledged) - set(orders))
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged orders are not on the promoted node: {lost[:20]}"
    unacknowledged = sorted(set(orders) - set(acknowledged))
    assert not unacknowledged, f"orders no client was answered with (duplicates?): {unacknowledged[:20]}"
    assert len(keys) == len(acknowledged), "an Idempotency-Key without its order, or an order with two keys"
    for order_id, (key, order) in acknowledged.items():
        assert keys[(order["user_id"], key)] == order_id
        expected_status = "cancelled" if order_id in report.cancelled else "placed"
        assert orders[order_id] == (order["user_id"], expected_status)
        assert items[order_id] == {line["product_id"]: line["qty"] for line in order["requested"]}
    expected_events = [(order_id, "orders.order.placed") for order_id in acknowledged]
    expected_events += [(order_id, "orders.order.cancelled") for order_id in report.cancelled]
    assert sorted(events) == sorted(expected_events)
    sold = Counter[int]()
    for order_id, lines in items.items():
        if order_id not in report.cancelled:  # a cancelled order's units went back
            sold.update(lines)
    assert stock == {product: INITIAL_STOCK - sold[product] for product in PRODUCTS}


def writes_refused_by_a_standby(log_dir: Path) -> int:
    """Lines of the service's logs where a standby refused a write it was sent (SQLSTATE 25006): only a connection
    libpq opened to a standby could get that, as opposed to libpq refusing the standby at connect."""
    return sum(
        "read-only transaction" in line
        for log in log_dir.glob("granian-*.log")
        for line in log.read_text().splitlines()
    )


def first_order_after(report: LoadReport, moment: float) -> float | None:
    """When the first order sent at or after ``moment`` was answered 200."""
    return min(
        (answered for sent, answered, status in report.order_answers if status == 200 and sent >= moment),
        default=None,
    )


def reasons(outcome: Outcome, since: float, until: float = math.inf) -> Counter[str]:
    """The reasons of the 503s answered in [since, until)."""
    return Counter(reason for _, answered, reason in outcome.report.reasons if since <= answered < until)


def assert_no_status_but_200_and_503(report: LoadReport) -> None:
    assert set(report.statuses) <= {200, 503}, report.summary()
    assert not report.transport_errors, report.summary()


def assert_recovered(outcome: Outcome) -> float:
    """An order answered 200 within RECOVERY_BOUND of the promotion, and no 503 to a request sent once a primary
    was reachable. Returns how long after the promotion that first order was answered."""
    failover, report = outcome.failover, outcome.report
    first = first_order_after(report, failover.promoted)
    assert first is not None
    assert first - failover.promoted <= RECOVERY_BOUND, report.summary()
    late = Counter(reason for sent, _, reason in report.reasons if sent >= failover.primary_reachable)
    assert not late, f"503s to requests sent with a primary reachable: {dict(late)}"
    return first - failover.promoted


def assert_not_ready_without_a_primary(outcome: Outcome, *, long_outage: bool = False) -> list[Probe]:
    """Readiness says 503 from the crash (once an answer from before it is no longer reused) until a primary is
    reachable, and 200 again within RECOVERY_BOUND of it. ``long_outage``: long enough that readiness must have
    been probed during it (a promotion right after the crash leaves a few tenths of a second). Returns the probes
    of the outage."""
    failover, probes = outcome.failover, outcome.probes
    since = failover.crash[1] + REUSE_SECONDS + 0.05
    outage = [probe for probe in probes if since <= probe.sent and probe.answered < failover.no_primary_until]
    if long_outage:
        assert outage, "no readiness probe during the outage"
    ready_during = [probe for probe in outage if probe.status != 503]
    assert not ready_during, (
        f"readiness answered {ready_during[0].status} {ready_during[0].sent - failover.crashed:.3f}s after the crash"
        f" with no primary reachable yet (promotion started {failover.promotion[0] - failover.crashed:.3f}s after it)"
    )
    ready_again = [
        probe.answered for probe in probes if probe.status == 200 and probe.sent >= failover.primary_reachable
    ]
    assert ready_again, "readiness never answered 200 after the failover"
    assert min(ready_again) - failover.primary_reachable <= RECOVERY_BOUND
    return outage


def record(name: str, outcome: Outcome, outage_probes: list[Probe], recovered_in: float) -> None:
    """Print what the clients saw before the crash, during the outage (until a primary was reachable) and after."""
    failover, report = outcome.failover, outcome.report
    bounds = {"before": (-math.inf, failover.crashed), "outage": (failover.crashed, failover.primary_reachable)}
    bounds["after"] = (failover.primary_reachable, math.inf)
    phases = []
    for phase, (since, until) in bounds.items():
        statuses = Counter(status for _, answered, status in report.answers if since <= answered < until)
        phases.append(f"{phase} {dict(sorted(statuses.items()))} (503: {dict(reasons(outcome, since, until))})")
    first_any = report.first_success_after(failover.promoted)
    first_order = first_order_after(report, failover.crashed)
    assert first_any is not None  # assert_recovered saw an order after the promotion
    assert first_order is not None
    steps = f"promoted {failover.promoted - failover.crashed:.3f}s after the crash"
    if failover.moved is not None:
        steps += f", name moved {failover.moved - failover.crashed:.3f}s after it"
    readiness = Counter(f"{probe.status} {probe.reason.split(':')[0]}".strip() for probe in outage_probes)
    figures = [
        steps,
        "statuses " + "; ".join(phases),
        f"first order 200 {recovered_in:.3f}s after the promotion (any 200: {first_any - failover.promoted:.3f}s)",
        f"orders refused for {first_order - failover.crashed:.3f}s from the crash",
        f"readiness probes during the outage {dict(readiness)}",
        report.summary(),
    ]
    print(f"\n[failover: {name}] " + "; ".join(figures))


@pytest.mark.parametrize("synchronous", [True, False], ids=["synchronous", "asynchronous"])
def test_a_crash_loses_only_commits_the_standby_had_not_flushed(synchronous: bool) -> None:
    """The harness itself: the standby streams through a link that delays the primary's WAL by 100 ms, the primary
    crashes and the link dies with it (what it held is lost). Synchronous, every commit the primary acknowledged is
    on the promoted standby; asynchronous, the last ones are not (so the failover tests would see a loss)."""
    commits = 10
    with replicated_postgres(synchronous=synchronous, link_delay_ms=100) as pair:
        assert pair.link is not None
        with pair.primary.connect() as connection:
            connection.execute("CREATE TABLE acknowledged (n int)")
            pair.wait_until_replayed()
            for n in range(commits):
                connection.execute("INSERT INTO acknowledged VALUES (%s)", [n])  # autocommit: acknowledged here
        pair.kill_primary()
        pair.link.cut()
        pair.promote()
        survived = pair.standby.value("SELECT count(*) FROM acknowledged")
    if synchronous:
        assert survived == commits
    else:
        assert survived < commits


async def test_name_moved_after_the_promotion(
    pair: ReplicatedPostgres, stocked: ProvisionedDatabase, tmp_path: Path
) -> None:
    """The primary crashes, the standby is promoted, then the name moves to it (a DNS name the failover updates):
    503s meanwhile, then orders on the new primary, none of the acknowledged ones lost."""

    async def fail_over() -> Failover:
        crash = await kill_primary(pair)
        promotion = await promote(pair)
        moved = await move_name_to_standby(pair)
        return Failover(crash, promotion, moved)

    outcome = await under_load(service_env(stocked), tmp_path, fail_over)
    assert_no_status_but_200_and_503(outcome.report)
    assert_acknowledged_orders_exactly_on(pair.standby, stocked, outcome.report)
    recovered_in = assert_recovered(outcome)
    outage_probes = assert_not_ready_without_a_primary(outcome)
    assert not reasons(outcome, outcome.failover.crashed)["read_only"]  # the name never pointed at a standby
    record("name moved after the promotion", outcome, outage_probes, recovered_in)


@pytest.mark.parametrize("session_attrs", ["any", "read-write"])
async def test_name_moved_to_the_standby_before_its_promotion(
    pair: ReplicatedPostgres, stocked: ProvisionedDatabase, tmp_path: Path, session_attrs: str
) -> None:
    """The primary crashes and the name moves to the standby UNPROMOTED_FOR seconds before its promotion (DNS that
    moves early, an orchestrator that flips the VIP first): the service meets a standby.

    ``any`` (``DB_TARGET_SESSION_ATTRS``): libpq takes the standby, which refuses every write (SQLSTATE 25006): each
    must be a 503 ``read_only``, never a 500, and readiness must say not ready. ``read-write`` (the default): libpq
    refuses the standby at connect ("session is read-only"), so the service never sends it a write: 503
    ``read_only`` too, which tells an operator that the database is up but takes no writes.
    """

    async def fail_over() -> Failover:
        crash = await kill_primary(pair)
        moved = await move_name_to_standby(pair)
        await asyncio.sleep(UNPROMOTED_FOR)  # the fault lasts this long: nothing to wait for
        promotion = await promote(pair)
        return Failover(crash, promotion, moved)

    settings = service_env(stocked, DB_TARGET_SESSION_ATTRS=session_attrs)
    outcome = await under_load(settings, tmp_path, fail_over)
    assert_no_status_but_200_and_503(outcome.report)
    assert_acknowledged_orders_exactly_on(pair.standby, stocked, outcome.report)
    recovered_in = assert_recovered(outcome)
    outage_probes = assert_not_ready_without_a_primary(outcome, long_outage=True)
    read_only = reasons(outcome, outcome.failover.crashed)["read_only"]
    assert read_only > 0, "the service never met the standby"
    assert any(probe.reason.startswith("read_only") for probe in outage_probes), "readiness never met it"
    if session_attrs == "read-write":
        assert not writes_refused_by_a_standby(tmp_path), "a connection landed on the standby"
    record(
        f"name moved to the standby {UNPROMOTED_FOR}s before its promotion, DB_TARGET_SESSION_ATTRS={session_attrs}",
        outcome,
        outage_probes,
        recovered_in,
    )


async def test_both_nodes_in_db_host(pair: ReplicatedPostgres, stocked: ProvisionedDatabase, tmp_path: Path) -> None:
    """No name: ``DB_HOST`` lists the primary and the standby (two ports). libpq tries them in turn and keeps the
    one that takes writes (``DB_TARGET_SESSION_ATTRS=read-write``, the default). The primary crashes, the standby
    is promoted: the service finds it by itself, never having had a connection to it while it was a standby."""

    async def fail_over() -> Failover:
        crash = await kill_primary(pair)
        promotion = await promote(pair)
        return Failover(crash, promotion)

    settings = service_env(stocked, DB_HOST=pair.db_host_list())
    assert settings.db_target_session_attrs == "read-write"
    outcome = await under_load(settings, tmp_path, fail_over)
    assert_no_status_but_200_and_503(outcome.report)
    assert_acknowledged_orders_exactly_on(pair.standby, stocked, outcome.report)
    recovered_in = assert_recovered(outcome)
    outage_probes = assert_not_ready_without_a_primary(outcome)
    assert not writes_refused_by_a_standby(tmp_path), "a connection landed on the standby"
    record(f"both nodes in DB_HOST={settings.db_host}", outcome, outage_probes, recovered_in)
