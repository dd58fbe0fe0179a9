"""A real HAProxy (Debian's package) in front of the service's replicas, health-checking their readiness."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from tests.conftest import unavailable
from tests.support.granian import free_port

STARTUP_TIMEOUT = 20.0


def haproxy_binary() -> str | None:
    return shutil.which("haproxy") or next((path for path in ("/usr/sbin/haproxy",) if os.access(path, os.X_OK)), None)


def config(port: int, stats_port: int, backends: list[int], *, check_interval_ms: int) -> str:
    """Round robin over ``backends``; a replica takes requests once ``/health`` answered 200 twice, and none
    once it answered anything else three times. A slow answer fails a check only after 2 s (by default a
    check times out after ``inter``: under load, every replica could fail one at once, and HAProxy then
    answers 503 itself). A request is sent again elsewhere only if it never reached a replica
    (``retry-on conn-failure``): safe for a POST."""
    servers = "\n".join(
        f"    server replica-{n} 127.0.0.1:{backend} check" for n, backend in enumerate(backends, start=1)
    )
    return f"""global
    maxconn 4000

defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    retries 3
    option redispatch
    retry-on conn-failure

frontend orders
    bind 127.0.0.1:{port}
    default_backend replicas

frontend stats
    bind 127.0.0.1:{stats_port}
    stats enable
    stats uri /stats

backend replicas
    balance roundrobin
    option httpchk GET /health
    http-check expect status 200
    timeout check 2s
    default-server inter {check_interval_ms}ms fall 3 rise 2
{servers}
"""


@dataclass
class HAProxy:
    base_url: str
    stats_url: str

    def servers_up(self) -> int:
        """How many replicas HAProxy's health checks found ready (its CSV statistics)."""
        rows = httpx.get(f"{self.stats_url};csv", timeout=5).text.splitlines()
        header = rows[0].lstrip("# ").split(",")
        status = header.index("status")
        kind = header.index("svname")
        return sum(
            1
            for row in rows[1:]
            if row and row.split(",")[kind] not in {"FRONTEND", "BACKEND"} and row.split(",")[status] == "UP"
        )


@contextlib.contextmanager
def haproxy(backends: list[int], *, check_interval_ms: int = 200) -> Iterator[HAProxy]:
    """HAProxy on a free port in front of ``backends`` (ports on 127.0.0.1), once every one is UP."""
    binary = haproxy_binary()
    if binary is None:
        unavailable("haproxy is not installed")
    assert binary is not None
    port, stats_port = free_port(), free_port()
    with tempfile.TemporaryDirectory(prefix="orders-haproxy-") as directory:
        path = Path(directory) / "haproxy.cfg"
        path.write_text(config(port, stats_port, backends, check_interval_ms=check_interval_ms))
        log = Path(directory) / "haproxy.log"
        with log.open("wb") as output:
            process = subprocess.Popen([binary, "-db", "-f", str(path)], stdout=output, stderr=subprocess.STDOUT)
        try:
            _wait_until_listening(process, stats_port, log)
            balancer = HAProxy(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{stats_port}/stats")
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while balancer.servers_up() < len(backends):  # servers start DOWN until their checks pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)  # polling HAProxy's view
            yield balancer
        finally:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"haproxy exited with {process.returncode}: {log.read_text()}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)  # polling for startup
    raise RuntimeError(f"haproxy did not listen within {STARTUP_TIMEOUT}s: {log.read_text()}")
