"""Run ``orders-service serve`` (real Granian) in a subprocess for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from orders_service.config import Settings

STARTUP_TIMEOUT = 30.0


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
    port = free_port()
    env = {
        **os.environ,
        **settings.as_env(),
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "WORKERS": str(workers),
        "DB_POOL_TIMEOUT": "30",
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    log_path = metrics_dir.parent / f"granian-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orders_service.cli", "serve"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    server = GranianServer(process, f"http://127.0.0.1:{port}", log_path)
    try:
        wait_until_serving(server, workers)
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
