"""The real service under Granian: the README flow, metrics across workers, graceful shutdown, probes."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import get_args

import httpx
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import Engine, text

from orders_service.app import create_app
from orders_service.causes import UnavailableCause
from orders_service.config import Settings
from orders_service.dev.migrate import PROJECT_ROOT
from tests.conftest import Catalog
from tests.support.granian import GranianServer, free_port, start_granian, start_service
from tests.support.scrape import requests_total, scrape


def test_readme_quick_test_flow(granian: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, price_cents=1299, stock=100)
    catalog.add(2, price_cents=2500, stock=50)
    with httpx.Client(base_url=granian.base_url) as client:
        assert client.get("/health").json() == {"status": "ok", "events": "disabled: AMQP_URL not set"}
        created = client.post(
            "/orders",
            headers={"Content-Type": "application/json", "X-User": "alice"},
            content='{"items":[{"product_id":1,"qty":2},{"product_id":2,"qty":1}]}',
        )
        assert created.status_code == 200
        assert created.json()["total_cents"] == 2 * 1299 + 2500
        mine = client.get("/orders/me", headers={"X-User": "alice"})
        assert mine.status_code == 200
        assert mine.json() == [created.json()]
        assert client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}).status_code == 401


def api_doc_paging_example() -> str:
    """The shell example of docs/api.md that walks every page of GET /orders/me."""
    blocks = re.findall(r"```bash\n(.*?)```", (PROJECT_ROOT / "docs" / "api.md").read_text(encoding="utf-8"), re.DOTALL)
    return str(next(block for block in blocks if "while [ -n" in block))


@pytest.mark.parametrize("orders", [0, 1, 2, 5], ids=lambda n: f"{n} orders, pages of 2")
def test_the_paging_example_of_the_api_docs_walks_every_page_once(
    granian: GranianServer, catalog: Catalog, orders: int
) -> None:
    catalog.add(1, stock=100)
    user = f"pager-{uuid.uuid4().hex[:8]}"
    placed = [
        httpx.post(
            f"{granian.base_url}/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": user}
        ).json()["id"]
        for _ in range(orders)
    ]
    script = (
        api_doc_paging_example()
        .replace("http://localhost:8000", granian.base_url)
        .replace("X-User: alice", f"X-User: {user}")
    )
    result = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert (result.returncode, result.stderr) == (0, "")
    pages = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(isinstance(page, list) and len(page) <= 2 for page in pages), result.stdout
    assert [order["id"] for page in pages for order in page] == placed[::-1]


def test_metrics_use_the_contract_names_and_labels_across_two_workers(granian: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, stock=5)
    before = scrape(granian)
    # Many fresh connections, so both workers serve some of them.
    for _ in range(20):
        httpx.get(f"{granian.base_url}/health/live")
    httpx.post(f"{granian.base_url}/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers={"X-User": "m"})
    httpx.post(f"{granian.base_url}/orders", json={"items": [{"product_id": 1, "qty": 9}]}, headers={"X-User": "m"})
    httpx.post(f"{granian.base_url}/orders", json={"items": [{"product_id": 99, "qty": 1}]}, headers={"X-User": "m"})
    httpx.get(f"{granian.base_url}/orders/me", headers={"X-User": "m"})
    httpx.get(f"{granian.base_url}/no/such/route")
    httpx.get(f"{granian.base_url}/another-{time.monotonic()}")
    httpx.put(f"{granian.base_url}/orders/me", headers={"X-User": "m"})
    after = scrape(granian)

    def delta(key: tuple[str, tuple[tuple[str, str], ...]]) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert (
        requests_total(after, "/health/live", "GET", "200") - requests_total(before, "/health/live", "GET", "200") == 20
    )
    assert requests_total(after, "/orders", "POST", "200") - requests_total(before, "/orders", "POST", "200") == 1
    assert requests_total(after, "/orders", "POST", "400") - requests_total(before, "/orders", "POST", "400") == 2
    assert requests_total(after, "/orders/me", "GET", "200") - requests_total(before, "/orders/me", "GET", "200") == 1
    assert requests_total(after, "<unrouted>", "GET", "404") - requests_total(before, "<unrouted>", "GET", "404") == 2
    assert requests_total(after, "<unrouted>", "PUT", "405") - requests_total(before, "<unrouted>", "PUT", "405") == 1
    assert delta(("orders_created_total", ())) == 1
    assert delta(("order_create_failures_total", (("reason", "insufficient_stock"),))) == 1
    assert delta(("order_create_failures_total", (("reason", "missing_product"),))) == 1
    duration = ("http_request_duration_seconds_count", (("method", "POST"), ("path", "/orders"), ("service", "orders")))
    assert delta(duration) == 3
    assert not any(name == "http_requests_total" and dict(labels)["path"] == "/metrics" for name, labels in after)
    label_sets = {frozenset(dict(labels)) for name, labels in after if name == "http_requests_total"}
    assert label_sets == {frozenset({"service", "path", "method", "status"})}
    bucket_labels = {
        frozenset(dict(labels)) for name, labels in after if name == "http_request_duration_seconds_bucket"
    }
    assert bucket_labels == {frozenset({"service", "path", "method", "le"})}


def test_failure_reasons_are_exported_at_zero_from_the_start(
    settings: Settings, tmp_path: Path, catalog: Catalog
) -> None:
    with start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server:
        metrics = scrape(server)
    assert metrics[("order_create_failures_total", (("reason", "missing_product"),))] == 0
    assert metrics[("order_create_failures_total", (("reason", "insufficient_stock"),))] == 0
    assert metrics[("orders_created_total", ())] == 0


def test_a_restart_starts_the_counters_from_zero(settings: Settings, tmp_path: Path, catalog: Catalog) -> None:
    """The multiprocess directory is emptied at start: a previous run's counts never leak into the next."""
    catalog.add(1, stock=5)
    metrics_dir = tmp_path / "metrics"
    with start_granian(settings, workers=2, metrics_dir=metrics_dir) as first:
        body = {"items": [{"product_id": 1, "qty": 1}]}
        assert httpx.post(f"{first.base_url}/orders", json=body, headers={"X-User": "r"}).status_code == 200
        assert scrape(first)[("orders_created_total", ())] == 1
    assert list(metrics_dir.glob("*.db"))  # the stopped run left its files behind
    with start_granian(settings, workers=2, metrics_dir=metrics_dir) as second:
        assert scrape(second)[("orders_created_total", ())] == 0


def test_sigterm_first_says_leaving_and_keeps_serving_for_the_grace_period(
    settings: Settings, tmp_path: Path, catalog: Catalog
) -> None:
    """Readiness 503 at once (the load balancer moves away), liveness 200, requests still served; then it exits 0."""
    catalog.add(1, stock=10)
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    (tmp_path / "metrics").mkdir()
    with start_service(["serve"], env, workers=2, log_dir=tmp_path, shutdown_grace=3) as server:
        with httpx.Client(base_url=server.base_url, timeout=10) as client:
            assert client.get("/health").status_code == 200
            server.process.send_signal(signal.SIGTERM)
            readiness = until_not_ready(client)
            live = client.get("/health/live")
            order = client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "late"})
            fresh_connection = httpx.get(f"{server.base_url}/orders/me", headers={"X-User": "late"}, timeout=10)
        assert server.process.wait(timeout=30) == 0
    assert readiness.status_code == 503
    assert readiness.headers["retry-after"] == "1"
    assert readiness.json()["reason"].startswith("shutting_down")
    assert live.status_code == 200
    assert order.status_code == 200
    assert fresh_connection.status_code == 200
    assert catalog.stock(1) == 9
    assert "SIGTERM: readiness answers 503" in server.log()


def until_not_ready(client: httpx.Client, timeout: float = 20.0) -> httpx.Response:
    """Poll readiness (every worker reads the same flag) until one answer is 503."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get("/health")
        if response.status_code == 503:
            return response
        time.sleep(0.02)  # polling, as the load balancer's health check does
    raise AssertionError("readiness kept answering 200 after SIGTERM")


def test_sigterm_lets_the_request_in_flight_finish(
    settings: Settings, tmp_path: Path, catalog: Catalog, engine: Engine
) -> None:
    catalog.add(1, stock=5)
    with start_granian(settings, workers=1, metrics_dir=tmp_path / "metrics") as server, engine.connect() as blocker:
        # Hold the product's row lock, so the order waits inside the server.
        blocker.execute(text(f"SELECT 1 FROM {settings.catalog_schema}.products WHERE id = 1 FOR UPDATE"))
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            pending = subprocess.Popen(
                [sys.executable, "-c", _POST_ONE_ORDER, server.base_url], stdout=subprocess.PIPE, text=True
            )
            wait_for_lock_waiter(engine)
            server.process.terminate()
            # The listener closes once shutdown starts; only then is the lock released.
            wait_until_refused(client)
            blocker.rollback()
            output, _ = pending.communicate(timeout=30)
        assert server.process.wait(timeout=30) == 0
    assert output.strip() == "200"
    assert catalog.stock(1) == 4
    assert catalog.order_count() == 1


_POST_ONE_ORDER = """
import sys, httpx
body = {"items": [{"product_id": 1, "qty": 1}]}
r = httpx.post(sys.argv[1] + "/orders", json=body, headers={"X-User": "t"}, timeout=30)
print(r.status_code)
"""


def wait_for_lock_waiter(engine: Engine, timeout: float = 20.0) -> None:
    """Until some backend waits for a row lock (the in-flight order)."""
    deadline = time.monotonic() + timeout
    with engine.connect() as connection:
        while time.monotonic() < deadline:
            waiting = connection.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity"
                    " WHERE wait_event_type = 'Lock' AND datname = current_database()"
                )
            ).scalar_one()
            if waiting:
                return
            connection.rollback()
            time.sleep(0.02)
    raise AssertionError("the order never reached the database")


def wait_until_refused(client: httpx.Client, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.get("/health/live", timeout=1, headers={"Connection": "close"})
        except httpx.TransportError:
            return
        time.sleep(0.02)
    raise AssertionError("the server kept accepting connections after SIGTERM")


async def test_readiness_is_503_with_a_reason_when_the_database_is_unreachable() -> None:
    settings = Settings(db_host="127.0.0.1", db_port=free_port(), health_timeout=2.0)
    async with AsyncTestClient(app=create_app(settings)) as client:
        ready = await client.get("/health")
        live = await client.get("/health/live")
        order = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "a"})
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    assert "database" in ready.json()["reason"]
    assert live.status_code == 200
    assert order.status_code == 503
    assert order.headers["retry-after"] == "1"


@pytest.mark.parametrize(("name", "value"), [("DB_PORT", "abc"), ("WORKERS", "0")])
def test_serve_refuses_a_bad_setting_with_a_clear_message(name: str, value: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orders_service.cli", "serve"],
        env={name: value, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert name in result.stderr
    assert "Traceback" not in result.stderr


def test_every_documented_outcome_has_a_series_before_its_first_request(granian: GranianServer) -> None:
    document = httpx.get(f"{granian.base_url}/schema/openapi.json").json()
    samples = scrape(granian)
    missing = [
        (path, method.upper(), status)
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        for status in operation["responses"]
        if status != "default" and ("http_requests_total", _labels(path, method.upper(), status)) not in samples
    ]
    assert missing == []
    timed = {dict(labels)["path"] for name, labels in samples if name == "http_request_duration_seconds_count"}
    assert set(document["paths"]) <= timed
    causes = {dict(labels)["cause"] for name, labels in samples if name == "service_unavailable_responses_total"}
    assert causes == set(get_args(UnavailableCause))


def _labels(path: str, method: str, status: str) -> tuple[tuple[str, str], ...]:
    return (("method", method), ("path", path), ("service", "orders"), ("status", status))
