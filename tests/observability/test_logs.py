"""Log lines of the running service: JSON on stdout, one access line per request, X-Request-ID everywhere."""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar.testing import AsyncTestClient

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.dev import migrate
from tests.support.database import scratch_database
from tests.support.granian import GranianServer, start_service, wait_for_access_line
from tests.support.rawhttp import raw_request

RFC3339_UTC_MS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
HEX_ID = re.compile(r"[0-9a-f]{32}")


def json_lines(log: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
        assert RFC3339_UTC_MS.fullmatch(line["time"]), line
    return lines


def access_lines(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The access lines by request id."""
    return {line["request_id"]: line for line in lines if line["logger"] == "orders_service.access"}


@dataclass
class Served:
    """What a stopped service answered and logged."""

    responses: dict[str, httpx.Response]
    raw_ids: dict[str, str]
    lines: list[dict[str, Any]]
    log: str


@pytest.fixture(scope="module")
def served(server: Settings, tmp_path_factory: pytest.TempPathFactory) -> Served:
    """``serve`` (JSON, 2 workers, LOG_USER=true) on a database without the catalog's table: requests, then stop."""
    tmp = tmp_path_factory.mktemp("logs")
    with scratch_database(server) as settings:
        migrate.upgrade(settings)
        env = {**os.environ, **settings.as_env(), "LOG_USER": "true", "PROMETHEUS_MULTIPROC_DIR": str(tmp / "m")}
        with start_service(["serve"], env, workers=2, log_dir=tmp) as service:
            url = service.base_url
            alice = {"X-User": "alice"}
            responses = {
                "listed": httpx.get(f"{url}/orders/me", headers={**alice, "X-Request-ID": "given id-1"}),
                "unknown order": httpx.get(f"{url}/orders/7", headers={**alice, "X-Request-ID": "x" * 128}),
                "unrouted": httpx.get(f"{url}/no/such/path", headers={"X-Request-ID": "unrouted-1"}),
                "wrong method": httpx.delete(f"{url}/orders/me", headers=alice),
                "bad id": httpx.get(f"{url}/orders/0", headers={**alice, "X-Request-ID": "bad-id-1"}),
                "no user": httpx.get(f"{url}/orders/me", headers={"X-Request-ID": "no-user-1"}),
                "too long id": httpx.get(f"{url}/health/live", headers={"X-Request-ID": "y" * 129}),
                "503": httpx.post(
                    f"{url}/orders",
                    json={"items": [{"product_id": 1, "qty": 1}]},
                    headers={**alice, "X-Request-ID": "order-503"},
                ),
                "scrape": httpx.get(f"{url}/metrics", headers={"X-Request-ID": "scrape-1"}),
                "probe": httpx.get(f"{url}/health/live", headers={"X-Request-ID": "probe-1"}),
            }
            # Granian's parser answers 400 itself to other control characters (b"\x01", b"\x7f"): no id there.
            raw = {
                "tab": raw_request(url, "GET", "/orders/me", [(b"X-Request-ID", b"ab\tcd")]),
                "not ascii": raw_request(url, "GET", "/orders/me", [(b"X-Request-ID", "abé".encode())]),
            }
            assert service.terminate() == 0
            log = service.log()
    return Served(responses, {name: r.headers["x-request-id"] for name, r in raw.items()}, json_lines(log), log)


def test_every_line_is_one_json_object_granian_and_the_start_included(served: Served) -> None:
    loggers = {line["logger"] for line in served.lines}
    assert {"_granian", "orders_service", "orders_service.access"} <= loggers, loggers
    assert any("Started worker-2" in line["message"] for line in served.lines)
    start_error = [line for line in served.lines if line["level"] == "ERROR" and "catalog.products" in line["message"]]
    assert len(start_error) == 1, served.log
    assert "request_id" not in start_error[0]
    assert "Traceback" not in served.log


@pytest.mark.parametrize(
    ("name", "status", "path", "method"),
    [
        ("listed", 200, "/orders/me", "GET"),
        ("unknown order", 404, "/orders/{order_id}", "GET"),
        ("unrouted", 404, "/no/such/path", "GET"),
        ("wrong method", 405, "/orders/me", "DELETE"),
        ("bad id", 400, "/orders/{order_id}", "GET"),
        ("no user", 401, "/orders/me", "GET"),
        ("503", 503, "/orders", "POST"),
    ],
)
def test_one_access_line_per_request_with_its_id_and_route_template(
    served: Served, name: str, status: int, path: str, method: str
) -> None:
    response = served.responses[name]
    assert response.status_code == status
    request_id = response.headers["x-request-id"]
    lines = [line for line in served.lines if line.get("request_id") == request_id]
    access = [line for line in lines if line["logger"] == "orders_service.access"]
    assert len(access) == 1, lines
    line = access[0]
    assert (line["level"], line["method"], line["path"], line["status"]) == ("INFO", method, path, status)
    assert 0 < line["duration_ms"] < 10_000
    assert line["message"].startswith(f"{method} {path} {status} ")


def test_a_valid_request_id_is_echoed_and_a_missing_one_generated(served: Served) -> None:
    assert served.responses["listed"].headers["x-request-id"] == "given id-1"
    assert served.responses["unknown order"].headers["x-request-id"] == "x" * 128
    assert served.responses["unrouted"].headers["x-request-id"] == "unrouted-1"
    assert served.responses["bad id"].headers["x-request-id"] == "bad-id-1"
    assert served.responses["no user"].headers["x-request-id"] == "no-user-1"
    assert HEX_ID.fullmatch(served.responses["wrong method"].headers["x-request-id"])


@pytest.mark.parametrize("name", ["tab", "not ascii"])
def test_an_invalid_request_id_is_replaced(served: Served, name: str) -> None:
    request_id = served.raw_ids[name]
    assert HEX_ID.fullmatch(request_id), request_id
    assert access_lines(served.lines)[request_id]["path"] == "/orders/me"


def test_a_too_long_request_id_is_replaced(served: Served) -> None:
    assert HEX_ID.fullmatch(served.responses["too long id"].headers["x-request-id"])


def test_the_503_warning_carries_the_request_id(served: Served) -> None:
    assert served.responses["503"].json()["reason"] == "table_missing"
    warnings = [line for line in served.lines if line["level"] == "WARNING" and line.get("request_id") == "order-503"]
    assert len(warnings) == 1, served.log
    assert warnings[0]["message"].startswith("503 table_missing")
    assert warnings[0]["logger"] == "orders_service.api.problem_details"


def test_scrapes_and_probes_are_not_logged_at_info(served: Served) -> None:
    for name in ("scrape", "probe"):
        assert served.responses[name].status_code == 200
        assert served.responses[name].headers["x-request-id"] == f"{name}-1"
        assert f"{name}-1" not in access_lines(served.lines)


def test_log_user_true_logs_the_user_and_nothing_else_new(served: Served) -> None:
    lines = access_lines(served.lines)
    assert lines["given id-1"]["user"] == "alice"
    assert "user" not in lines["no-user-1"]
    assert "alice" not in served.log.replace('"user":"alice"', "")


def test_the_user_is_not_logged_by_default(granian: GranianServer) -> None:
    request_id = f"default-user-{time.monotonic_ns()}"
    response = httpx.get(f"{granian.base_url}/orders/me", headers={"X-User": "bob", "X-Request-ID": request_id})
    assert response.headers["x-request-id"] == request_id
    line = wait_for_access_line(granian, request_id)
    assert "user" not in line
    assert "bob" not in json.dumps(line)


class Collected(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.mark.parametrize("access_log", ["true", "false"])
async def test_access_log_switches_access_lines_and_not_request_ids(settings: Settings, access_log: str) -> None:
    app = create_app(Settings.from_env({**settings.as_env(), "ACCESS_LOG": access_log}))
    collected = Collected()
    access_logger = logging.getLogger("orders_service.access")
    access_logger.addHandler(collected)
    try:
        async with AsyncTestClient(app=app) as client:
            routed = await client.get("/orders/me", headers={"X-User": "dave"})
            unrouted = await client.get("/nowhere")
    finally:
        access_logger.removeHandler(collected)
    assert HEX_ID.fullmatch(routed.headers["x-request-id"])
    assert HEX_ID.fullmatch(unrouted.headers["x-request-id"])
    logged = [(record.path, record.status, record.request_id) for record in collected.records]  # type: ignore[attr-defined]
    if access_log == "true":
        assert logged == [
            ("/orders/me", 200, routed.headers["x-request-id"]),
            ("/nowhere", 404, unrouted.headers["x-request-id"]),
        ]
    else:
        assert logged == []


def test_dev_logs_readable_lines_with_the_request_id(server: Settings, tmp_path: Path) -> None:
    with scratch_database(server) as settings:
        env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
        env.pop("LOG_FORMAT", None)
        with start_service(["dev"], env, workers=1, log_dir=tmp_path) as service:
            response = httpx.get(
                f"{service.base_url}/orders/me", headers={"X-User": "carol", "X-Request-ID": "console-1"}
            )
            assert response.headers["x-request-id"] == "console-1"
            assert service.terminate() == 0
            log = service.log()
    lines = log.splitlines()
    for line in lines:
        with pytest.raises(json.JSONDecodeError):
            json.loads(line)
    access = [line for line in lines if "orders_service.access" in line]
    assert len(access) == 1, log
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z INFO    orders_service\.access \[console-1\] GET /orders/me 200 "
        r"\d+\.\dms",
        access[0],
    ), access[0]
    assert any("created catalog.products with demo products" in line for line in lines)
    assert any(re.search(r"INFO +_granian\S* Started worker-1", line) for line in lines), log
    assert "carol" not in log
