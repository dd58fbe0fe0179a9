"""Driving a running service with wrk and measuring what it cost: CPU of its process tree, peak RSS."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from orders_service.config import Settings

WRK_DIR = Path(__file__).resolve().parent / "wrk"
PROJECT_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    base_url: str
    log: Path


@dataclass
class Usage:
    """What the service's processes used during a run."""

    cpu_seconds: float = 0.0
    peak_rss_mb_per_process: float = 0.0  # the largest single process (a worker, or Granian's main)
    peak_rss_mb_tree: float = 0.0  # all of them at once
    samples: list[float] = field(default_factory=list)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tree(pid: int) -> list[psutil.Process]:
    root = psutil.Process(pid)
    return [root, *root.children(recursive=True)]


def _cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for process in processes:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


@contextlib.contextmanager
def usage_of(pid: int, interval: float = 0.1) -> Iterator[Usage]:
    """CPU seconds of ``pid``'s process tree over the block, and its peak RSS (sampled)."""
    usage = Usage()
    processes = _tree(pid)
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(interval):
            sizes = []
            for process in processes:
                with contextlib.suppress(psutil.NoSuchProcess):
                    sizes.append(process.memory_info().rss / 2**20)
            if sizes:
                usage.peak_rss_mb_per_process = max(usage.peak_rss_mb_per_process, *sizes)
                usage.peak_rss_mb_tree = max(usage.peak_rss_mb_tree, sum(sizes))

    sampler = threading.Thread(target=sample, daemon=True)
    before = _cpu(processes)
    sampler.start()
    try:
        yield usage
    finally:
        stop.set()
        sampler.join()
        usage.cpu_seconds = _cpu(processes) - before


def wrk(
    base_url: str, script: str, args: list[str], *, connections: int, seconds: float, env: dict[str, str] | None = None
) -> dict[str, float]:
    """Run wrk with ``script``; ``env``: added to its environment (BENCH_TOKENS: the users' bearer tokens)."""
    binary = shutil.which("wrk")
    if binary is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    command = [
        binary,
        "-t1",
        f"-c{connections}",
        f"-d{seconds}s",
        "--timeout",
        "30s",
        "-s",
        str(WRK_DIR / script),
        base_url,
        "--",
        *args,
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, timeout=seconds + 120, env={**os.environ, **(env or {})}
    )
    if result.returncode != 0:
        raise RuntimeError(f"wrk failed: {result.stderr}")
    summary: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return summary


def orders_created(served: Served) -> int | None:
    """The product's orders_created_total (None for a service without /metrics: the floor)."""
    try:
        response = httpx.get(f"{served.base_url}/metrics", timeout=10)
    except httpx.HTTPError:
        return None
    if response.status_code != 200:
        return None
    for line in response.text.splitlines():
        if line.startswith("orders_created_total "):
            return int(float(line.split()[1]))
    return None


def _wait_until_healthy(served: Served, path: str, workers: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if served.process.poll() is not None:
            raise RuntimeError(f"the service exited: {served.log.read_text(errors='replace')}")
        log = served.log.read_text(errors="replace")
        with contextlib.suppress(httpx.TransportError):
            if (
                log.count("Started worker-") >= workers
                and httpx.get(f"{served.base_url}{path}", timeout=2).status_code == 200
            ):
                return
        time.sleep(0.1)  # polling for startup
    raise RuntimeError(f"the service did not become healthy: {served.log.read_text(errors='replace')}")


@contextlib.contextmanager
def _serve(
    command: list[str], env: dict[str, str], workers: int, log_dir: Path, health: str, cwd: Path = PROJECT_ROOT
) -> Iterator[Served]:
    port = int(env["LISTEN_PORT"])
    log = log_dir / f"service-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT, cwd=cwd)
    served = Served(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_healthy(served, health, workers)
        yield served
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def product(
    settings: Settings, workers: int, log_dir: Path, **overrides: str
) -> contextlib.AbstractContextManager[Served]:
    """``orders-service serve``, exactly as production runs it."""
    return product_from(PROJECT_ROOT, settings, workers, log_dir, overrides)


def product_from(
    source: Path, settings: Settings, workers: int, log_dir: Path, overrides: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[Served]:
    """``orders-service serve`` from the code of ``source`` (this checkout, or another one run with this one's
    environment)."""
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(source),
        **settings.as_env(),
        "LISTEN_HOST": "127.0.0.1",
        "LISTEN_PORT": str(port),
        "WORKERS": str(workers),
        "PROMETHEUS_MULTIPROC_DIR": str(log_dir / f"metrics-{port}"),
        "OTEL_SDK_DISABLED": "true",  # tracing off, whatever this shell exports, unless a variant turns it on
        **(overrides or {}),
    }
    return _serve([sys.executable, "-m", "orders_service.cli", "serve"], env, workers, log_dir, "/health", source)


def floor(settings: Settings, workers: int, log_dir: Path) -> contextlib.AbstractContextManager[Served]:
    """The bare app of ``benchmarks/floor``, under Granian with the same interface, loop and workers."""
    port = free_port()
    env = {**os.environ, **settings.as_env(), "LISTEN_PORT": str(port)}
    command = [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "uvloop",
        "--workers",
        str(workers),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "benchmarks.floor.app:app",
    ]
    return _serve(command, env, workers, log_dir, "/health")
