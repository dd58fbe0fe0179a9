"""A row held by another writer: the configured lock and statement timeouts end the wait, each as its own 503;
a backend terminated while an order waits answers a 503 that says the order may or may not have been placed.

The module's own database, whose runtime role waits ``ROLE_LOCK_TIMEOUT`` for a lock by default: only the
timeouts the service sends can end a wait sooner.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import Connection, Engine, create_engine, text

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.db.readiness import READINESS_CHECK
from orders_service.db.statements import Step
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.lifecycle.worker_components import WorkerComponents
from tests.conftest import OUR_TABLES, Catalog
from tests.support.database import ProvisionedDatabase, backends_waiting_for_a_lock, provisioned_database
from tests.support.faults import freezable_proxy, wait_until
from tests.support.granian import start_granian

ROLE_LOCK_TIMEOUT = "1min"
ROLE_LOCK_TIMEOUT_MS = "60000"
HELD = 1
ORDER = {"items": [{"product_id": HELD, "qty": 1}]}


@pytest.fixture(scope="module")
def patient_database(server: Settings) -> Iterator[ProvisionedDatabase]:
    """A database of this module's own; its runtime role (ours alone) waits a minute for a row lock by default."""
    with provisioned_database(server) as database:
        with psycopg.connect(database.admin.conninfo, autocommit=True) as connection:
            connection.execute(f"ALTER ROLE {database.runtime.db_user} SET lock_timeout = '{ROLE_LOCK_TIMEOUT}'")
        yield database


@pytest.fixture(scope="module")
def patient_engine(patient_database: ProvisionedDatabase) -> Iterator[Engine]:
    engine = create_engine(patient_database.admin.database_url)
    yield engine
    engine.dispose()


@pytest.fixture
def shop(patient_engine: Engine, patient_database: ProvisionedDatabase) -> Catalog:
    """Empty tables, and product ``HELD`` with 10 units."""
    runtime = patient_database.runtime
    with patient_engine.begin() as connection:
        connection.execute(text(f"TRUNCATE {', '.join(f'{runtime.db_schema}.{table}' for table in OUR_TABLES)}"))
        connection.execute(text(f"TRUNCATE {runtime.catalog_schema}.products"))
    catalog = Catalog(patient_engine, runtime)
    catalog.add(HELD, stock=10)
    return catalog


def with_settings(database: ProvisionedDatabase, **overrides: str) -> Settings:
    return Settings.from_env({**database.runtime.as_env(), **overrides})


def hold_product(connection: Connection, catalog: Catalog) -> None:
    """Lock product ``HELD``'s row, as a catalog job would, until ``connection`` rolls back."""
    connection.execute(text(f"SELECT 1 FROM {catalog.catalog_schema}.products WHERE id = {HELD} FOR UPDATE"))


def assert_503(response: httpx.Response, reason: str) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "1"
    body: dict[str, Any] = response.json()
    assert (body["status"], body["reason"]) == (503, reason)
    return body


async def test_a_statement_past_the_statement_timeout_is_503_statement_timeout(
    patient_database: ProvisionedDatabase, shop: Catalog
) -> None:
    """Waiting on a held row with a long lock timeout, the statement timeout ends the wait first."""
    short_statements = with_settings(
        patient_database, DB_LOCK_TIMEOUT_MS=ROLE_LOCK_TIMEOUT_MS, DB_STATEMENT_TIMEOUT_MS="300"
    )
    with shop.engine.connect() as other_writer:
        hold_product(other_writer, shop)
        async with AsyncTestClient(app=create_app(short_statements)) as client:
            response = await client.post("/orders", json=ORDER, headers={"X-User": "alice"})
        other_writer.rollback()

    body = assert_503(response, "statement_timeout")
    assert "changed nothing" in body["detail"]
    assert shop.stock(HELD) == 10
    assert shop.order_count() == 0


async def test_the_configured_lock_timeout_is_sent_whatever_the_roles_default(
    patient_database: ProvisionedDatabase, shop: Catalog
) -> None:
    """DB_LOCK_TIMEOUT_MS=200 under a role that would wait a minute: the 503 comes after about 200 ms.

    The statement timeout (10 s) is the next thing that could end the wait, so a lock timeout
    not sent shows as a ``statement_timeout`` after 10 s. The bound on the time is loose (a shared
    machine), far below both.
    """
    impatient = with_settings(patient_database, DB_LOCK_TIMEOUT_MS="200", DB_STATEMENT_TIMEOUT_MS="10000")
    with shop.engine.connect() as other_writer:
        hold_product(other_writer, shop)
        async with AsyncTestClient(app=create_app(impatient)) as client:
            assert (await client.get("/orders/me", headers={"X-User": "alice"})).status_code == 200  # connected
            started = time.monotonic()
            response = await client.post("/orders", json=ORDER, headers={"X-User": "alice"})
            waited = time.monotonic() - started
        other_writer.rollback()

    assert_503(response, "lock_timeout")
    assert waited < 2.0
    assert shop.order_count() == 0


async def test_a_backend_terminated_while_an_order_waits_answers_that_the_outcome_is_unknown(
    patient_database: ProvisionedDatabase, shop: Catalog, tmp_path: Path
) -> None:
    """The connection is lost after the order was sent: it may have been committed. The 503 says so,
    and retrying with the same Idempotency-Key places the order once."""
    service = with_settings(patient_database, DB_LOCK_TIMEOUT_MS=ROLE_LOCK_TIMEOUT_MS)
    headers = {"X-User": "alice", "Idempotency-Key": "terminated-while-waiting"}
    with start_granian(service, workers=1, metrics_dir=tmp_path / "metrics") as server:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as http:
            with shop.engine.connect() as other_writer:
                hold_product(other_writer, shop)
                placing = asyncio.create_task(http.post("/orders", json=ORDER, headers=headers))
                await wait_until(
                    lambda: len(backends_waiting_for_a_lock(patient_database)) == 1, 30, "the order waiting on the row"
                )
                with shop.engine.connect() as dba:
                    (pid,) = backends_waiting_for_a_lock(patient_database)
                    assert dba.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar_one()
                response = await placing
                other_writer.rollback()
            retried = await http.post("/orders", json=ORDER, headers=headers)

    body = assert_503(response, "database_unavailable")
    assert "may or may not have been applied" in body["detail"]
    assert "Idempotency-Key" in body["detail"]
    assert retried.status_code == 200, retried.text
    assert shop.order_count() == 1
    assert shop.stock(HELD) == 9


async def test_an_order_cut_off_by_its_deadline_answers_that_the_outcome_is_unknown(
    patient_database: ProvisionedDatabase, shop: Catalog
) -> None:
    """The network freezes once the order is on its way (no error ever arrives): the request's deadline ends
    the wait. The order may have been committed: the 503 says so (never "changed nothing"), and the retry with
    its key places it once."""
    with freezable_proxy(("127.0.0.1", patient_database.runtime.db_port)) as proxy:
        frozen = with_settings(
            patient_database,
            DB_HOST="127.0.0.1",
            DB_PORT=str(proxy.port),
            DB_LOCK_TIMEOUT_MS=ROLE_LOCK_TIMEOUT_MS,
            DB_STATEMENT_TIMEOUT_MS="500",  # the deadline: 0.5 s + 2 s
        )
        headers = {"X-User": "alice", "Idempotency-Key": "cut-off"}
        async with AsyncTestClient(app=create_app(frozen)) as client:
            assert (await client.get("/orders/me", headers={"X-User": "alice"})).status_code == 200  # connected
            proxy.freeze()
            started = time.monotonic()
            response = await client.post("/orders", json=ORDER, headers=headers)
            waited = time.monotonic() - started
            proxy.thaw()
            retried = await client.post("/orders", json=ORDER, headers=headers)

    body = assert_503(response, "database_timeout")
    assert "may or may not have been applied" in body["detail"]
    assert waited < 2.5 + 2.0  # the deadline, and room for a loaded machine
    assert retried.status_code == 200, retried.text
    assert shop.order_count() == 1
    assert shop.stock(HELD) == 9


async def test_a_driver_failure_without_an_sqlstate_is_a_lost_connection_not_a_bug(
    patient_database: ProvisionedDatabase, shop: Catalog
) -> None:
    """libpq's own failures carry no SQLSTATE ("cannot exit pipeline mode while busy" when the server ended the
    session mid-pipeline, with the connection not yet marked broken): the connection's state is unknown, so it is
    discarded and the request answers 503 (outcome unknown for a write), never a 500.

    Calls the runner's translation directly (a private method of ours): no server makes libpq fail this way on
    demand. The connection is a real one from the service's pool."""
    runner = WorkerComponents.create(patient_database.runtime).runner
    try:
        connection = await runner.engine.raw_connection()
        failure = psycopg.OperationalError("cannot exit pipeline mode while busy")
        assert failure.sqlstate is None
        translated = await runner._translate(failure, connection, [], writes=True, timed_out=False)
        assert isinstance(translated, DatabaseUnavailable)
        assert (translated.cause, translated.outcome_unknown, translated.connection_lost) == (
            "database_unavailable",
            True,
            True,
        )
        driver = connection.driver_connection
        assert driver is not None
        assert driver.closed  # closed now; the pool replaces it at the next checkout
        connection.close()
        ((rows,)) = await runner.run([Step(READINESS_CHECK, {})], writes=False)  # the next request is served
        assert len(rows) == 1
    finally:
        await runner.engine.dispose()
