"""Running the service as a new user would: the commands of the README, their messages, what they leave behind."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from orders_service.config import Settings
from orders_service.dev import migrate
from orders_service.dev.migrate import PROJECT_ROOT
from tests.support.database import scratch_database
from tests.support.granian import free_port, start_service

# A new user's environment: no DB_* and nothing else of ours (coverage's own variables pass, to measure the run).
BARE_ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "HOME": os.environ.get("HOME", "/root"),
    **{name: value for name, value in os.environ.items() if name.startswith("COVERAGE")},
}


def run_cli(args: list[str], env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd or PROJECT_ROOT, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.fixture
def without_catalog(server: Settings) -> Iterator[Settings]:
    """A database with our migrations applied but no catalog products table."""
    with scratch_database(server) as settings:
        migrate.upgrade(settings)
        yield settings


def test_serve_without_the_catalog_table_says_so_once_and_answers_503(
    without_catalog: Settings, tmp_path: Path
) -> None:
    env = {**os.environ, **without_catalog.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with start_service(["serve"], env, workers=1, log_dir=tmp_path) as server:
        ready = httpx.get(f"{server.base_url}/health")
        orders = [
            httpx.post(
                f"{server.base_url}/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "u"}
            )
            for _ in range(3)
        ]
        log = server.log()
    assert ready.status_code == 503
    assert 'relation "catalog.products" does not exist' in ready.json()["reason"]
    assert ready.headers["retry-after"] == "1"
    for order in orders:
        assert order.status_code == 503
        assert order.headers["content-type"] == "application/problem+json"
        assert order.json()["reason"] == "table_missing"
        assert 'relation "catalog.products" does not exist' in order.json()["detail"]
    start_lines = [line for line in log.splitlines() if "ERROR" in line and "catalog.products" in line]
    assert len(start_lines) == 1, log
    assert "(id integer, price_cents integer, stock integer)" in start_lines[0]
    assert "Traceback" not in log


def test_listen_host_may_be_a_host_name(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with start_service(["serve"], env, workers=1, log_dir=tmp_path, listen_host="localhost") as server:
        assert httpx.get(f"{server.base_url}/health/live").status_code == 200


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["-m", "orders_service.cli", "serve"], {"LISTEN_HOST": "notahost.invalid"}, "LISTEN_HOST 'notahost.invalid'"),
        (["-m", "alembic", "upgrade", "head"], {"DB_PORT": "abc"}, "invalid configuration: Expected `int`"),
        (["-m", "orders_service.cli", "serve"], {"DB_PORT": "abc"}, "invalid configuration: Expected `int`"),
    ],
    ids=["serve, LISTEN_HOST not a host", "alembic, DB_PORT not a number", "serve, DB_PORT not a number"],
)
def test_a_bad_setting_is_one_line_and_exit_2(args: list[str], env: dict[str, str], expected: str) -> None:
    result = run_cli([sys.executable, *args], {**BARE_ENV, **env})
    assert result.returncode == 2, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


# The commands that connect to the database and exit: what a new user runs after `dev`.
ONE_SHOT_COMMANDS = {
    "purge-idempotency-keys": ["-m", "orders_service.cli", "purge-idempotency-keys"],
    "purge-events": ["-m", "orders_service.cli", "purge-events"],
    "alembic upgrade head": ["-m", "alembic", "upgrade", "head"],
    "dev with DB_* set": ["-m", "orders_service.cli", "dev"],
}


def unreachable(server: Settings, fault: str) -> Settings:
    """Settings that cannot connect: a port where nothing listens, or a role that does not exist."""
    if fault == "nothing listens":
        return Settings.from_env({**server.as_env(), "DB_HOST": "127.0.0.1", "DB_PORT": str(free_port())})
    return Settings.from_env({**server.as_env(), "DB_USER": f"nobody_{uuid.uuid4().hex[:8]}"})


def names_what_it_tried(line: str, settings: Settings) -> bool:
    return (
        f'database "{settings.db_name}"' in line
        and f"host {settings.db_host}, port {settings.db_port}," in line
        and f'role "{settings.db_user}"' in line
    )


@pytest.mark.parametrize("fault", ["nothing listens", "no such role"])
@pytest.mark.parametrize("command", ONE_SHOT_COMMANDS)
def test_a_command_that_cannot_connect_says_what_it_tried_in_one_line(
    server: Settings, command: str, fault: str, tmp_path: Path
) -> None:
    settings = unreachable(server, fault)
    env = {**BARE_ENV, **settings.as_env()}
    result = run_cli([sys.executable, *ONE_SHOT_COMMANDS[command]], env, cwd=tmp_path if "dev" in command else None)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert len(result.stderr.strip().splitlines()) == 1, output
    line = result.stderr.strip()
    assert line.startswith("orders-service: cannot connect to "), line
    assert names_what_it_tried(line, settings), line
    expected = "Connection refused" if fault == "nothing listens" else f'role "{settings.db_user}" does not exist'
    assert expected in line
    assert "Traceback" not in output
    assert "ERROR" not in result.stdout


@pytest.mark.parametrize("fault", ["nothing listens", "no such role"])
def test_serve_that_cannot_connect_says_what_it_tried_once_and_serves_503(
    server: Settings, fault: str, tmp_path: Path
) -> None:
    """serve starts anyway (the database may come later): one WARNING line at start, readiness 503."""
    settings = unreachable(server, fault)
    env = {**BARE_ENV, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with start_service(["serve"], env, workers=1, log_dir=tmp_path) as service:
        ready = httpx.get(f"{service.base_url}/health", timeout=10)
        log = service.log()
    assert ready.status_code == 503
    about_it = [line for line in log.splitlines() if "cannot connect" in line]
    assert len(about_it) == 1, log
    assert json.loads(about_it[0])["level"] == "WARNING"
    assert names_what_it_tried(json.loads(about_it[0])["message"], settings), about_it[0]
    assert "Traceback" not in log


@pytest.mark.parametrize("hours", ["abc", "1.5", "12"])
def test_purge_explains_what_it_expects(hours: str) -> None:
    result = run_cli(
        [sys.executable, "-m", "orders_service.cli", "purge-idempotency-keys", "--older-than-hours", hours], BARE_ENV
    )
    assert result.returncode == 2
    assert "expected a whole number of hours, at least 24" in result.stderr
    assert "_at_least_24" not in result.stderr


def test_serve_removes_the_metrics_directory_it_created(settings: Settings, tmp_path: Path) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    env = {**env, **settings.as_env(), "TMPDIR": str(temp)}
    with start_service(["serve"], env, workers=2, log_dir=tmp_path) as server:
        assert httpx.get(f"{server.base_url}/metrics").status_code == 200
        assert [path.name for path in temp.iterdir() if path.name.startswith("orders-metrics-")]
    assert server.process.returncode == 0
    assert not [path for path in temp.iterdir() if path.name.startswith("orders-metrics-")]


def test_serve_keeps_the_metrics_directory_the_operator_configured(settings: Settings, tmp_path: Path) -> None:
    configured = tmp_path / "metrics"
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(configured)}
    with start_service(["serve"], env, workers=1, log_dir=tmp_path):
        pass
    assert configured.is_dir()


def test_a_start_says_a_few_meaningful_lines(settings: Settings, tmp_path: Path) -> None:
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with start_service(["serve"], env, workers=2, log_dir=tmp_path) as server:
        httpx.get(f"{server.base_url}/health/live")
        log = server.log()
    assert "setup plugin" not in log
    assert "Deprecat" not in log
    assert len(log.strip().splitlines()) <= 12, log


def test_dev_runs_the_service_with_nothing_configured(tmp_path: Path) -> None:
    """The README's one command, on a machine with no database: an embedded PostgreSQL, demo products, orders."""
    env = {**BARE_ENV, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
    with start_service(["dev"], env, workers=1, log_dir=tmp_path, cwd=tmp_path) as server:
        assert httpx.get(f"{server.base_url}/health", timeout=10).json() == {
            "status": "ok",
            "events": "disabled: AMQP_URL not set",
        }
        order = httpx.post(
            f"{server.base_url}/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers={"X-User": "alice"}
        )
        assert order.status_code == 200
        assert order.json()["total_cents"] == 2 * 1299
        log = server.log()
        # The README's next step: the other commands, pointed at dev's database by the line it printed.
        dev_database = dict(
            assignment.split("=", 1)
            for assignment in shlex.split(log.split("reach its database with: ", 1)[1].splitlines()[0])
        )
        maintenance = {
            command: run_cli([sys.executable, *ONE_SHOT_COMMANDS[command]], {**BARE_ENV, **dev_database})
            for command in ("alembic upgrade head", "purge-idempotency-keys", "purge-events")
        }
    assert sorted(dev_database) == ["DB_HOST", "DB_NAME", "DB_PASS", "DB_PORT", "DB_USER"]
    for command, result in maintenance.items():
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    assert "deleted 0 idempotency key(s)" in maintenance["purge-idempotency-keys"].stdout
    assert server.process.returncode == 0
    assert (tmp_path / ".devdb" / "pgdata" / "PG_VERSION").exists()
    pgdata = str(tmp_path / ".devdb" / "pgdata")
    assert not [p for p in psutil.process_iter(["cmdline"]) if pgdata in " ".join(p.info["cmdline"] or [])]
    assert "initdb" not in log.lower()
    assert "pg_ctl" not in log


def test_dev_uses_the_configured_database_and_creates_a_demo_catalog_only_if_missing(
    server: Settings, tmp_path: Path
) -> None:
    with scratch_database(server) as settings:
        env = {**BARE_ENV, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics")}
        with start_service(["dev"], env, workers=1, log_dir=tmp_path, cwd=tmp_path) as service:
            products = httpx.post(
                f"{service.base_url}/orders", json={"items": [{"product_id": 3, "qty": 1}]}, headers={"X-User": "a"}
            )
            log = service.log()
    assert products.status_code == 400  # demo product 3 exists and has no stock
    assert products.json()["reason"] == "insufficient_stock"
    assert "created catalog.products with demo products" in log
    assert not (tmp_path / ".devdb").exists()
