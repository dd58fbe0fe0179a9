"""A rolling deploy with the real pieces, under load: not one request may fail.

HAProxy (round robin, health checks on ``/health``) in front of 3 ``serve`` replicas of 2 workers,
PgBouncer in transaction mode in front of PostgreSQL, the relay in each replica publishing to
RabbitMQ. Clients that never retry place orders (each with its Idempotency-Key), list and cancel
them without pause, while the replicas are replaced one by one (SIGTERM, wait for the exit, start
the new one, wait until it takes traffic), the SIGTERM sent to the main process only (Kubernetes,
``docker stop``) or to every process of the replica (systemd's ``KillMode=control-group``, ``tini
-g``: the workers got it too and stopped listening at once: 410 failed of ~54,000 requests); after
the first replacement an additive
migration (a nullable column, an index built concurrently) is applied. Then: no failed request,
every order answered 200 in the database exactly once, stock exact, every event published.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from orders_service.config import Settings
from orders_service.dev.migrate import PROJECT_ROOT, alembic_config
from tests.conftest import Catalog, unavailable
from tests.support.amqp import event_queue, require_broker
from tests.support.database import ProvisionedDatabase, provisioned_database
from tests.support.faults import wait_until
from tests.support.granian import GranianServer, free_port, start_service
from tests.support.haproxy import haproxy
from tests.support.pgbouncer import pgbouncer, prepared_binary
from tests.support.scrape import requests_total, scrape

REPLICAS = 3
WORKERS = 2
GRACE_SECONDS = 2.0  # above HAProxy's check interval (0.2 s) x fall (3), with room
CLIENTS = 12
ROUNDS = 1  # every replica replaced once (twice took 1.5 minutes more of CI's 30, and found nothing the first missed)
SIGTERM_TO_EVERY_PROCESS = {1}  # replica 2 gets it as systemd's control-group delivers it; replicas 1 and 3 not
PRODUCTS = range(1, 11)
STOCK = 1_000_000

CURRENT_HEAD = ScriptDirectory.from_config(alembic_config(Settings())).get_current_head() or ""
ADDITIVE_MIGRATION = '''"""Test only: an additive change, as a rolling deploy's expand step makes it.

Revision ID: 9001
Revises: {head}
"""

import sqlalchemy as sa
from alembic import context, op

revision = "9001"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.add_column("orders", sa.Column("gift_note", sa.Text(), nullable=True), schema=schema)
    with context.get_context().autocommit_block():
        op.create_index(
            "ix_orders_gift_note", "orders", ["gift_note"], schema=schema, postgresql_concurrently=True
        )


def downgrade() -> None:
    schema = context.config.attributes["settings"].db_schema
    op.drop_index("ix_orders_gift_note", "orders", schema=schema)
    op.drop_column("orders", "gift_note", schema=schema)
'''.replace("{head}", CURRENT_HEAD)


@dataclass
class Load:
    """What the clients did: every answer's status (or transport error), the orders placed and cancelled."""

    statuses: Counter[str] = field(default_factory=Counter)
    placed: dict[int, dict[int, int]] = field(default_factory=dict)  # order id -> {product id: qty}
    cancelled: set[int] = field(default_factory=set)
    slowest: float = 0.0
    failed: list[str] = field(default_factory=list)  # what the first failures said
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def failures(self) -> Counter[str]:
        return Counter({outcome: n for outcome, n in self.statuses.items() if not outcome.startswith("2")})


async def client_loop(base_url: str, load: Load, seed: int) -> None:
    """One client that never retries: orders of 1-3 products, every fifth cancelled, its list now and then."""
    rng = random.Random(seed)
    user = f"deploy-{seed}"
    async with httpx.AsyncClient(base_url=base_url, timeout=30, headers={"X-User": user}) as client:
        n = 0
        while not load.stop.is_set():
            n += 1
            wanted = {product: rng.randint(1, 2) for product in rng.sample(list(PRODUCTS), rng.randint(1, 3))}
            items = [{"product_id": product, "qty": qty} for product, qty in wanted.items()]
            placed = await send(
                load, client.post("/orders", json={"items": items}, headers={"Idempotency-Key": str(uuid.uuid4())})
            )
            if placed is not None and placed.status_code == 200:
                order_id = int(placed.json()["id"])
                load.placed[order_id] = wanted
                if n % 5 == 0:
                    cancelled = await send(load, client.post(f"/orders/{order_id}/cancel"))
                    if cancelled is not None and cancelled.status_code == 200:
                        load.cancelled.add(order_id)
            if n % 4 == 0:
                await send(load, client.get("/orders/me", params={"limit": 5}))


async def send(load: Load, request: object) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response: httpx.Response = await request  # type: ignore[misc]
    except httpx.TransportError as exc:
        load.statuses[type(exc).__name__] += 1
        if len(load.failed) < 10:
            load.failed.append(f"{time.monotonic():.2f} {exc!r}")
        return None
    load.slowest = max(load.slowest, time.monotonic() - started)
    load.statuses[str(response.status_code)] += 1
    if response.status_code >= 300 and len(load.failed) < 10:
        load.failed.append(
            f"{time.monotonic():.2f} {response.request.method} {response.request.url.path} "
            f"{response.status_code} {response.text[:300]}"
        )
    return response


@dataclass
class Replica:
    port: int
    server: GranianServer
    stack: contextlib.ExitStack


def start_replica(settings: Settings, port: int, log_dir: Path) -> Replica:
    metrics_dir = log_dir / f"metrics-{port}-{uuid.uuid4().hex[:6]}"
    metrics_dir.mkdir()
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    stack = contextlib.ExitStack()
    server = stack.enter_context(
        start_service(["serve"], env, workers=WORKERS, log_dir=log_dir, shutdown_grace=GRACE_SECONDS, port=port)
    )
    return Replica(port, server, stack)


async def takes_traffic(replica: Replica) -> None:
    """Until the load balancer sends the replica orders (it found it ready)."""
    await wait_until(
        lambda: requests_total(scrape(replica.server), "/orders", "POST", "200") > 0, 60, "traffic to the new replica"
    )


def stop(replica: Replica, *, every_process: bool = False) -> int:
    """SIGTERM to the main process, as Kubernetes or ``docker stop`` send it, or to every process of the replica at
    once (``every_process``), as systemd's default ``KillMode=control-group`` or ``tini -g`` do."""
    process = replica.server.process
    if every_process:
        os.killpg(process.pid, signal.SIGTERM)  # the replica runs in a process group of its own (start_service)
    else:
        process.send_signal(signal.SIGTERM)
    code = process.wait(60)
    replica.stack.close()
    return code


@pytest.fixture
def rolling_database(server: Settings) -> Iterator[ProvisionedDatabase]:
    with provisioned_database(server) as database:
        yield database


def apply_additive_migration(database: ProvisionedDatabase, versions: Path) -> float:
    """Upgrade to the test's migration as the schema's owner, as a deploy's expand step; its duration."""
    from alembic import command  # noqa: PLC0415

    config = alembic_config(database.owner)
    config.set_main_option("path_separator", "os")
    config.set_main_option(
        "version_locations", os.pathsep.join([str(PROJECT_ROOT / "migrations" / "versions"), str(versions)])
    )
    started = time.monotonic()
    command.upgrade(config, "9001")
    return time.monotonic() - started


async def test_replacing_every_replica_twice_under_load_fails_no_request(
    rolling_database: ProvisionedDatabase, tmp_path: Path
) -> None:
    binary = prepared_binary()
    if binary is None:
        unavailable("no PgBouncer >= 1.21 (set PGBOUNCER_PREPARED to one; .ci/run builds 1.24)")
    assert binary is not None
    broker_url = await require_broker()
    database = rolling_database
    catalog = Catalog(create_engine(database.admin.database_url), database.admin)
    for product_id in PRODUCTS:
        catalog.add(product_id, price_cents=100 + product_id, stock=STOCK)
    versions = tmp_path / "versions"
    versions.mkdir()
    (versions / "9001_gift_note.py").write_text(ADDITIVE_MIGRATION)
    ports = [free_port() for _ in range(REPLICAS)]
    load = Load()
    replacements: list[tuple[int, int]] = []  # (requests answered during it, failures)
    marks: list[str] = []  # when each replacement began, to place failures
    async with event_queue(broker_url) as queue:
        with pgbouncer(binary, database.runtime, [database.runtime, database.admin], prepared=True) as bounced:
            settings = Settings.from_env(
                {
                    **bounced.as_env(),
                    "AMQP_URL": broker_url,
                    "EVENTS_EXCHANGE": queue.exchange,
                    "EVENTS_LISTEN": "false",  # behind PgBouncer: the relays poll
                    "EVENTS_POLL_INTERVAL_MS": "100",
                    "DB_POOL_TIMEOUT": "30",
                }
            )
            replicas = [start_replica(settings, port, tmp_path) for port in ports]
            try:
                with haproxy(ports) as balancer:
                    clients = [
                        asyncio.create_task(client_loop(balancer.base_url, load, seed)) for seed in range(CLIENTS)
                    ]
                    try:
                        await wait_until(lambda: len(load.placed) >= 50, 60, "orders flowing")
                        migrated_in = None
                        for round_ in range(ROUNDS):
                            for slot in range(REPLICAS):
                                before, failed_before = sum(load.statuses.values()), sum(load.failures().values())
                                group = slot in SIGTERM_TO_EVERY_PROCESS
                                marks.append(
                                    f"{time.monotonic():.2f} replacing replica {slot + 1}, SIGTERM to "
                                    + ("every process" if group else "the main process")
                                )
                                assert await asyncio.to_thread(stop, replicas[slot], every_process=group) == 0
                                replicas[slot] = await asyncio.to_thread(start_replica, settings, ports[slot], tmp_path)
                                await takes_traffic(replicas[slot])
                                if round_ == 0 and slot == 0:
                                    migrated_in = await asyncio.to_thread(apply_additive_migration, database, versions)
                                replacements.append(
                                    (
                                        sum(load.statuses.values()) - before,
                                        sum(load.failures().values()) - failed_before,
                                    )
                                )
                    finally:
                        load.stop.set()
                        await asyncio.gather(*clients)
                    await wait_until(lambda: pending_events(catalog) == 0, 60, "every event published")
            finally:
                for replica in replicas:
                    if replica.server.process.poll() is None:
                        stop(replica)
        expected_events = len(load.placed) + len(load.cancelled)
        await queue.wait_for(lambda received: len({m.message_id for m in received}) >= expected_events, 60, "events")
    print(
        f"\n[rolling deploy] {sum(load.statuses.values())} requests, {dict(load.statuses)}; per replacement "
        f"(answered, failed): {replacements}; migration applied in {migrated_in:.2f} s under load; slowest answer "
        f"{load.slowest * 1000:.0f} ms"
    )
    assert load.failures() == Counter(), (load.failed, marks)
    assert load.slowest < database.admin.db_lock_timeout_ms / 1000  # no request queued behind a table lock for long
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders") == len(load.placed)
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE status = 'cancelled'") == len(load.cancelled)
    for product_id in PRODUCTS:
        sold = sum(
            wanted.get(product_id, 0) for order_id, wanted in load.placed.items() if order_id not in load.cancelled
        )
        assert catalog.stock(product_id) == STOCK - sold, product_id
    received = {m.message_id for m in queue.received}
    assert len(received) == expected_events
    with catalog.engine.connect() as connection:
        assert (
            connection.execute(
                text("SELECT version_num FROM " + database.admin.db_schema + ".alembic_version")
            ).scalar_one()
            == "9001"
        )
    catalog.engine.dispose()


def pending_events(catalog: Catalog) -> int:
    return catalog.scalar("SELECT count(*) FROM {orders}.outbox WHERE published_at IS NULL")
