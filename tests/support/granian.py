"""Run ``orders-service serve`` (real Granian) in a subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from orders_service.config import Settings

# Generous: on a loaded 2-core machine (coverage in every worker) a worker has taken over 30 s to boot.
STARTUP_TIMEOUT = 90.0
LOG_TIMEOUT = 10.0
# Every (path, method, status) the Granian servers of this test run answered, for the OpenAPI check.
OBSERVED_STATUSES: set[tuple[str, str, str]] = set()
LIVE_SERVERS: list[GranianServer] = []


@dataclass
class GranianServer:
    process: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def wait_for_access_line(server: GranianServer, request_id: str) -> dict[str, Any]:
    """The access line of ``request_id``: it is written by a worker's log thread after the response went out.

    The request's metrics are recorded and any error logged before it.
    """
    deadline = time.monotonic() + LOG_TIMEOUT
    while time.monotonic() < deadline:
        for line in server.log().splitlines():
            if request_id in line:
                entry: dict[str, Any] = json.loads(line)
                if entry["logger"] == "orders_service.access" and entry.get("request_id") == request_id:
                    return entry
        time.sleep(0.05)  # polling for a line another process writes, not synchronising on a guess
    raise AssertionError(f"no access line for {request_id} within {LOG_TIMEOUT}s:\n{server.log()}")


def record_statuses(server: GranianServer) -> None:
    """Add what ``server`` answered (its http_requests_total) to OBSERVED_STATUSES."""
    try:
        metrics = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return  # a test stopped it already
    for family in text_string_to_metric_families(metrics):
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.value > 0:
                OBSERVED_STATUSES.add((sample.labels["path"], sample.labels["method"], sample.labels["status"]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until_serving(server: GranianServer, workers: int) -> None:
    """Poll until every worker has started and the liveness endpoint answers (or the process dies / time runs out).

    Waiting for every worker matters: a SIGTERM while a worker is still booting leaves that
    worker orphaned (Granian 2.8).
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"granian exited with {server.process.returncode}:\n{server.log()}")
        try:
            started = server.log().count("Started worker-")
            if started >= workers and httpx.get(f"{server.base_url}/health/live", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)  # polling for startup, not synchronising on a guess
    raise RuntimeError(f"granian did not start within {STARTUP_TIMEOUT}s:\n{server.log()}")


@contextlib.contextmanager
def start_granian(settings: Settings, *, workers: int, metrics_dir: Path) -> Iterator[GranianServer]:
    """``orders-service serve`` on 127.0.0.1 and a free port, metrics shared through ``metrics_dir``."""
    env = {**os.environ, **settings.as_env(), "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with start_service(["serve"], env, workers=workers, log_dir=metrics_dir.parent) as server:
        yield server


@contextlib.contextmanager
def start_service(
    command: list[str],
    env: dict[str, str],
    *,
    workers: int,
    log_dir: Path,
    cwd: Path | None = None,
    listen_host: str = "127.0.0.1",
    shutdown_grace: float = 0,
    port: int | None = None,
) -> Iterator[GranianServer]:
    """``orders-service <command>`` with exactly ``env`` (plus the listen address), until it serves every worker.

    ``listen_host`` must resolve to 127.0.0.1, where the tests connect. ``shutdown_grace``: its
    SHUTDOWN_GRACE_SECONDS (none by default: a test's server stops at once). ``port``: a free one unless given
    (a replacement replica takes its predecessor's).
    """
    port = port or free_port()
    env = {
        **env,
        "LISTEN_HOST": listen_host,
        "LISTEN_PORT": str(port),
        "WORKERS": str(workers),
        "SHUTDOWN_GRACE_SECONDS": str(shutdown_grace),
    }
    log_path = log_dir / f"granian-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orders_service.cli", *command],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            start_new_session=True,  # its own process group: the workers can be killed with it
        )
    server = GranianServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_serving(server, workers)
        LIVE_SERVERS.append(server)
        yield server
    finally:
        if server in LIVE_SERVERS:
            LIVE_SERVERS.remove(server)
            record_statuses(server)
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        # A worker that got SIGTERM while booting can outlive Granian's main process (Granian 2.8): end it too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
