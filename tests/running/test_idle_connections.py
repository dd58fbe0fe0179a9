"""Idle keep-alive connections do not starve probes and orders (the real ``serve``, 2 workers).

A load balancer's or a client pool's idle keep-alive connections count against each worker's
connection cap, and the kernel hashes new connections to the workers' ``SO_REUSEPORT``
listeners, not by load: with Granian's default cap (``backlog // workers``: 512 at 2 workers),
1,000 idle connections left some ``/health`` probes unanswered for 10 s and more.
"""

from __future__ import annotations

import contextlib
import resource
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.granian import GranianServer, start_granian
from tests.support.rawhttp import parse_response

IDLE = 1_100
ANSWER_WITHIN = 1.0  # seconds, for every probe and the order
PROBES = 40


def address(server: GranianServer) -> tuple[str, int]:
    url = urlsplit(server.base_url)
    return url.hostname or "127.0.0.1", url.port or 80


def ask(server: GranianServer, request: bytes, timeout: float) -> tuple[int, float]:
    """One request on a new connection: its status and how long the answer took (AssertionError past ``timeout``)."""
    started = time.monotonic()
    with socket.create_connection(address(server), timeout=timeout) as sock:
        sock.sendall(request)
        raw = b""
        try:
            while chunk := sock.recv(65536):
                raw += chunk
        except TimeoutError:
            raise AssertionError(f"no answer within {timeout} s: {request[:40]!r}") from None
    response = parse_response(raw)
    assert response is not None, "closed without an answer"
    return response.status, time.monotonic() - started


@contextlib.contextmanager
def idle_keep_alive_connections(server: GranianServer, count: int) -> Iterator[list[socket.socket]]:
    """``count`` connections that each had one request answered and then stay open, idle (keep-alive)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 1000), hard))
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.create_connection(address(server), timeout=10)
            sockets.append(sock)
            sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: lb\r\n\r\n")
            answer = sock.recv(65536)
            assert answer.startswith(b"HTTP/1.1 200"), answer
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def test_1100_idle_keep_alive_connections_leave_every_probe_and_order_answered_within_a_second(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    catalog.add(1, stock=10)
    with (
        start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server,
        idle_keep_alive_connections(server, IDLE),
    ):
        probes = [
            ask(server, b"GET /health HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n", ANSWER_WITHIN)
            for _ in range(PROBES)
        ]
        liveness = ask(server, b"GET /health/live HTTP/1.1\r\nHost: lb\r\nConnection: close\r\n\r\n", ANSWER_WITHIN)
        body = b'{"items": [{"product_id": 1, "qty": 1}]}'
        order = ask(
            server,
            b"POST /orders HTTP/1.1\r\nHost: lb\r\nConnection: close\r\nX-User: idle\r\n"
            b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body,
            ANSWER_WITHIN,
        )
    slowest = max(seconds for _, seconds in probes)
    print(f"\n[idle connections] {IDLE} idle keep-alive connections: {PROBES} probes, slowest {slowest * 1000:.0f} ms")
    assert {status for status, _ in probes} == {200}
    assert liveness[0] == 200
    assert order[0] == 200
    assert catalog.order_count() == 1
