"""A real Prometheus (Debian's package) scraping a test's service, queried through its HTTP API."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.granian import free_port

SCRAPE_INTERVAL_SECONDS = 1
JOB = "orders"


@dataclass
class Prometheus:
    base_url: str
    log_path: Path

    def query(self, promql: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base_url}/api/v1/query", params={"query": promql}, timeout=10)
        body = response.json()
        assert body.get("status") == "success", body
        return list(body["data"]["result"])

    def value(self, promql: str) -> float | None:
        """The single value of an instant query, None when it has no result."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float, within: float = 30.0) -> None:
        """Poll Prometheus (an outside process scraping on its own clock) until ``promql`` equals ``expected``."""
        deadline = time.monotonic() + within
        seen = None
        while time.monotonic() < deadline:
            seen = self.value(promql)
            if seen == expected:
                return
            time.sleep(SCRAPE_INTERVAL_SECONDS / 4)  # polling an outside process
        raise AssertionError(f"{promql} stayed {seen}, not {expected}, for {within}s:\n{self.log_path.read_text()}")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@contextlib.contextmanager
def running_prometheus(
    binary: str, target: str, directory: Path, rule_files: Sequence[Path] = ()
) -> Iterator[Prometheus]:
    """Prometheus scraping ``target`` (host:port) every second as job ``orders``, evaluating ``rule_files``."""
    config = directory / "prometheus.yml"
    rules = "".join(f"  - '{path}'\n" for path in rule_files)
    config.write_text(
        f"global:\n  scrape_interval: {SCRAPE_INTERVAL_SECONDS}s\n  evaluation_interval: {SCRAPE_INTERVAL_SECONDS}s\n"
        f"scrape_configs:\n  - job_name: {JOB}\n    static_configs:\n      - targets: ['{target}']\n"
        + (f"rule_files:\n{rules}" if rules else "")
    )
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", log_path)
    try:
        _wait_until_ready(prometheus, process)
        yield prometheus
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_until_ready(prometheus: Prometheus, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"prometheus exited with {process.returncode}:\n{prometheus.log_path.read_text()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{prometheus.base_url}/-/ready", timeout=1).status_code == 200:
                return
        time.sleep(0.1)  # polling for startup
    raise RuntimeError(f"prometheus did not get ready:\n{prometheus.log_path.read_text()}")
