"""Bad clients under the real Granian: broken framing, bodies cut short, stalled or abandoned.

Each gets a 4xx (a problem body when the app answers) or a closed connection, nothing is
written, ``http_requests_total`` counts no 5xx (a client's doing must not fire the operators'
5xx alerts), and no ERROR line or traceback is logged.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.granian import GranianServer, start_granian, wait_for_access_line
from tests.support.rawhttp import RawResponse, abandon, connect, exchange, parse_response, read_until_closed
from tests.support.scrape import requests_by_status, requests_total, scrape

BODY_READ_TIMEOUT = 5
IDLE_TIMEOUT = 3  # HTTP_IDLE_TIMEOUT: an idle keep-alive connection, or a request head that never ends
ORDER = b'{"items": [{"product_id": 1, "qty": 1}]}'  # 40 bytes, 0x28


@pytest.fixture(scope="module")
def service(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GranianServer]:
    """One worker with one pooled connection, given up after 0.5 s of waiting for it; bodies read within 5 s."""
    tuned = Settings.from_env(
        {
            **settings.as_env(),
            "BODY_READ_TIMEOUT": str(BODY_READ_TIMEOUT),
            "HTTP_IDLE_TIMEOUT": str(IDLE_TIMEOUT),
            "DB_POOL_SIZE": "1",
            "DB_POOL_TIMEOUT": "0.5",
        }
    )
    with start_granian(tuned, workers=1, metrics_dir=tmp_path_factory.mktemp("metrics")) as server:
        yield server


@pytest.fixture(autouse=True)
def no_server_error(service: GranianServer) -> Iterator[None]:
    """After each test: no 5xx counted, no ERROR line, no traceback (the tests wait for their access lines)."""
    yield
    assert not {status for status, count in requests_by_status(scrape(service)).items() if status >= 500 and count}
    log = service.log()
    assert '"level":"ERROR"' not in log, log
    assert "Traceback" not in log, log


@pytest.fixture
def placed(service: GranianServer, catalog: Catalog) -> int:
    """Product 1 (stock 10) and one order of alice's for 2 units of it: its id."""
    catalog.add(1, stock=10)
    response = httpx.post(f"{service.base_url}/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers=ALICE)
    assert response.status_code == 200, response.text
    return int(response.json()["id"])


ALICE = {"X-User": "alice"}


def head(method: str, path: str, *fields: bytes, request_id: str | None = None) -> bytes:
    """A request's head: request line, Host, X-User alice, JSON, ``fields``, the blank line."""
    lines = [f"{method} {path} HTTP/1.1".encode(), b"Host: orders", b"X-User: alice", b"Content-Type: application/json"]
    if request_id is not None:
        lines.append(b"X-Request-ID: " + request_id.encode())
    return b"\r\n".join([*lines, *fields]) + b"\r\n\r\n"


def new_id(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:12]}"


def unchanged(catalog: Catalog, orders: int, stock: int) -> None:
    assert (catalog.order_count(), catalog.stock(1)) == (orders, stock)
    assert catalog.item_count() == orders


def assert_answered_4xx_or_closed(service: GranianServer, raw: bytes, request_id: str) -> RawResponse | None:
    """The answer to a broken request: None when the connection was closed without one."""
    response = parse_response(raw)
    if response is None:
        return None
    assert 400 <= response.status < 500, raw
    if response.headers.get("x-request-id") == request_id:  # the app answered (not Granian's own 400)
        assert response.headers["content-type"] == "application/problem+json", raw
        assert response.json()["status"] == response.status
        wait_for_access_line(service, request_id)
    return response


CHUNKED = b"Transfer-Encoding: chunked"
BROKEN_FRAMINGS: dict[str, tuple[tuple[bytes, ...], bytes]] = {
    # name: (header fields, what follows the head)
    "chunk size not hex": ((CHUNKED,), b"zz\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "chunk longer than its size": ((CHUNKED,), b"10\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "chunk size overflowing": ((CHUNKED,), b"ffffffffffffffffffff\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "negative chunk size": ((CHUNKED,), b"-28\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "no CRLF after the chunk": ((CHUNKED,), b"28\r\n" + ORDER + b"0\r\n\r\n"),
    "chunked not the last coding": ((b"Transfer-Encoding: chunked, gzip",), b"28\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "a coding before chunked": ((b"Transfer-Encoding: gzip, chunked",), b"28\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "a coding in a second field": ((CHUNKED, b"Transfer-Encoding: gzip"), b"28\r\n" + ORDER + b"\r\n0\r\n\r\n"),
    "a coding without chunked": ((b"Transfer-Encoding: gzip",), ORDER),
    "two different lengths": ((b"Content-Length: 40", b"Content-Length: 41"), ORDER),
    "length not a number": ((b"Content-Length: forty",), ORDER),
    "negative length": ((b"Content-Length: -40",), ORDER),
    "a list of lengths": ((b"Content-Length: 40, 41",), ORDER),
}


@pytest.mark.parametrize("framing", BROKEN_FRAMINGS, ids=list(BROKEN_FRAMINGS))
@pytest.mark.parametrize("target", ["place", "cancel"])
def test_broken_framing_is_4xx_or_closed_and_writes_nothing(
    service: GranianServer, catalog: Catalog, placed: int, framing: str, target: str
) -> None:
    fields, rest = BROKEN_FRAMINGS[framing]
    path = "/orders" if target == "place" else f"/orders/{placed}/cancel"
    request_id = new_id(framing.replace(" ", "-"))
    raw = exchange(service.base_url, head("POST", path, b"Connection: close", *fields, request_id=request_id) + rest)
    assert_answered_4xx_or_closed(service, raw, request_id)
    unchanged(catalog, orders=1, stock=8)
    order = httpx.get(f"{service.base_url}/orders/{placed}", headers=ALICE).json()
    assert order["status"] == "placed"


def test_content_length_beside_chunked_reads_the_chunks(service: GranianServer, catalog: Catalog) -> None:
    """Granian (hyper) drops the Content-Length and reads the chunks, as RFC 9112 section 6.3 says."""
    catalog.add(1, stock=10)
    request = head("POST", "/orders", b"Connection: close", b"Content-Length: 3", CHUNKED)
    response = parse_response(exchange(service.base_url, request + b"28\r\n" + ORDER + b"\r\n0\r\n\r\n"))
    assert response is not None
    assert response.status == 200, response.body
    unchanged(catalog, orders=1, stock=9)


@pytest.mark.parametrize(
    "fields",
    [
        (b"Content-Type: text/plain",),  # after head()'s application/json
        (b"Content-Type: application/json",),
        (b"Idempotency-Key: a", b"Idempotency-Key: b"),
        (b"X-User: bob",),
    ],
    ids=["content type then text", "content type twice", "idempotency key twice", "user twice"],
)
def test_a_header_given_twice_is_400_and_writes_nothing(
    service: GranianServer, catalog: Catalog, fields: tuple[bytes, ...]
) -> None:
    """Two values, two parsers, two readings: never guess which one the client meant."""
    catalog.add(1, stock=10)
    request_id = new_id("twice")
    request = head("POST", "/orders", b"Connection: close", b"Content-Length: 40", *fields, request_id=request_id)
    response = parse_response(exchange(service.base_url, request + ORDER))
    assert response is not None
    assert response.status == 400, response.body
    assert "more than once" in response.json()["detail"]
    wait_for_access_line(service, request_id)
    unchanged(catalog, orders=0, stock=10)


CUT_SHORT: dict[str, tuple[tuple[bytes, ...], bytes]] = {
    "content-length": ((b"Content-Length: 100",), b"{"),
    "inside a chunk": ((CHUNKED,), b"28\r\n" + ORDER[:10]),
    "between chunks": ((CHUNKED,), b"28\r\n" + ORDER + b"\r\n"),
}


@pytest.mark.parametrize("cut", CUT_SHORT, ids=list(CUT_SHORT))
@pytest.mark.parametrize("target", ["place", "cancel"])
def test_a_client_that_leaves_mid_body_is_counted_499_not_500(
    service: GranianServer, catalog: Catalog, placed: int, cut: str, target: str
) -> None:
    fields, sent = CUT_SHORT[cut]
    path, template = ("/orders", "/orders") if target == "place" else (f"/orders/{placed}/cancel", None)
    template = template or "/orders/{order_id}/cancel"
    before = requests_total(scrape(service), template, "POST", "499")
    request_id = new_id("leaves")
    abandon(service.base_url, head("POST", path, *fields, request_id=request_id) + sent)
    line = wait_for_access_line(service, request_id)
    assert (line["status"], line["path"], line["level"]) == (499, template, "INFO")
    assert requests_total(scrape(service), template, "POST", "499") == before + 1
    unchanged(catalog, orders=1, stock=8)
    assert httpx.get(f"{service.base_url}/orders/{placed}", headers=ALICE).json()["status"] == "placed"


STALLS: dict[str, tuple[tuple[bytes, ...], bytes]] = {
    "content-length": ((b"Content-Length: 100",), b"{"),
    "chunked, no last chunk": ((CHUNKED,), b"28\r\n" + ORDER + b"\r\n"),
    "nothing of the body": ((b"Content-Length: 40",), b""),
}


def stall(service: GranianServer, name: str, path: str = "/orders") -> tuple[socket.socket, str]:
    fields, sent = STALLS[name]
    sock = connect(service.base_url, timeout=60)
    request_id = new_id("stall")
    sock.sendall(head("POST", path, *fields, request_id=request_id) + sent)
    return sock, request_id


def assert_timed_out(service: GranianServer, sock: socket.socket, request_id: str) -> None:
    """408 with a problem body, then the connection closed by the server."""
    with sock:
        raw = read_until_closed(sock)  # returns only once the server closed the connection
    response = parse_response(raw)
    assert response is not None, "closed without an answer"
    assert response.status == 408, raw
    assert response.headers["connection"] == "close"
    assert f"within {BODY_READ_TIMEOUT} s" in response.json()["detail"]
    assert wait_for_access_line(service, request_id)["status"] == 408


def test_stalled_bodies_are_408_and_hold_no_database_connection(service: GranianServer, catalog: Catalog) -> None:
    """Three stalled bodies on a pool of one connection: an order placed meanwhile gets it at once.

    If a stalled request held the connection, the order would wait DB_POOL_TIMEOUT (0.5 s) and be
    a 503 ``pool_exhausted`` long before the stalls time out.
    """
    catalog.add(1, stock=10)
    stalls = [stall(service, name) for name in STALLS]
    order = httpx.post(f"{service.base_url}/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers=ALICE)
    in_use = scrape(service)[("db_pool_connections_in_use", (("pool", "requests"),))]
    answered_yet, _, _ = select.select([sock for sock, _ in stalls], [], [], 0)
    assert not answered_yet, "the stalls were answered before the order: too slow a machine to tell"
    assert order.status_code == 200, order.text
    assert in_use == 0
    for sock, request_id in stalls:
        assert_timed_out(service, sock, request_id)
    unchanged(catalog, orders=1, stock=9)


def test_a_body_dripping_in_gets_408_at_the_deadline(service: GranianServer, catalog: Catalog) -> None:
    """The deadline covers the whole body, not each piece: a byte every 0.2 s never completes 100."""
    catalog.add(1, stock=10)
    sock, request_id = stall(service, "content-length")
    started = time.monotonic()
    while not select.select([sock], [], [], 0.2)[0]:  # paces the drip; stops when the server answers
        assert time.monotonic() - started < 60, "no answer within a minute"
        sock.sendall(b" ")
    assert_timed_out(service, sock, request_id)
    unchanged(catalog, orders=0, stock=10)


def test_a_stalled_cancel_is_408_and_cancels_nothing(service: GranianServer, catalog: Catalog, placed: int) -> None:
    sock, request_id = stall(service, "content-length", path=f"/orders/{placed}/cancel")
    assert_timed_out(service, sock, request_id)
    unchanged(catalog, orders=1, stock=8)
    assert httpx.get(f"{service.base_url}/orders/{placed}", headers=ALICE).json()["status"] == "placed"


HOSTS: dict[str, tuple[bytes, ...]] = {
    "no Host": (),
    "two different Hosts": (b"Host: orders", b"Host: evil.example"),
    "the same Host twice": (b"Host: orders", b"Host: orders"),
}


@pytest.mark.parametrize("hosts", HOSTS, ids=list(HOSTS))
@pytest.mark.parametrize("path", ["/orders", "/health"])
def test_an_http_1_1_request_without_one_host_is_400_and_writes_nothing(
    service: GranianServer, catalog: Catalog, hosts: str, path: str
) -> None:
    """RFC 9112 section 3.2: exactly one Host in an HTTP/1.1 request; a proxy and the service must not disagree on
    which one it was for."""
    catalog.add(1, stock=10)
    request_id = new_id("host")
    method = "POST" if path == "/orders" else "GET"
    lines = [f"{method} {path} HTTP/1.1".encode(), *HOSTS[hosts], b"X-User: alice", b"Connection: close"]
    lines += [b"Content-Type: application/json", b"X-Request-ID: " + request_id.encode()]
    body = ORDER if method == "POST" else b""
    lines.append(f"Content-Length: {len(body)}".encode())
    response = parse_response(exchange(service.base_url, b"\r\n".join(lines) + b"\r\n\r\n" + body))
    assert response is not None
    assert response.status == 400, response.body
    assert response.headers["content-type"] == "application/problem+json"
    assert "Host" in response.json()["detail"]
    assert wait_for_access_line(service, request_id)["status"] == 400
    unchanged(catalog, orders=0, stock=10)


def test_http_1_0_without_host_is_served(service: GranianServer) -> None:
    response = parse_response(exchange(service.base_url, b"GET /health/live HTTP/1.0\r\n\r\n"))
    assert response is not None
    assert response.status == 200


ENCODINGS: dict[str, tuple[bytes, ...]] = {
    "identity then gzip, two lines": (b"Content-Encoding: identity", b"Content-Encoding: gzip"),
    "identity, gzip in one line": (b"Content-Encoding: identity, gzip",),
    "gzip then identity, two lines": (b"Content-Encoding: gzip", b"Content-Encoding: identity"),
}


@pytest.mark.parametrize("encodings", ENCODINGS, ids=list(ENCODINGS))
def test_a_content_coding_in_any_line_is_415(service: GranianServer, catalog: Catalog, encodings: str) -> None:
    """Every Content-Encoding line is read, not the first only: a coding anywhere is refused alike."""
    catalog.add(1, stock=10)
    request = head("POST", "/orders", b"Connection: close", b"Content-Length: 40", *ENCODINGS[encodings])
    response = parse_response(exchange(service.base_url, request + ORDER))
    assert response is not None
    assert response.status == 415, response.body
    assert "gzip" in response.json()["detail"]
    unchanged(catalog, orders=0, stock=10)


def test_identity_stated_twice_is_plain_json(service: GranianServer, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    request = head(
        "POST",
        "/orders",
        b"Connection: close",
        b"Content-Length: 40",
        b"Content-Encoding: identity",
        b"Content-Encoding: identity",
    )
    response = parse_response(exchange(service.base_url, request + ORDER))
    assert response is not None
    assert response.status == 200, response.body


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """What the server sent before it closed the connection, which it must do within ``seconds``."""
    sock.settimeout(seconds)
    with sock:
        try:
            return read_until_closed(sock)
        except TimeoutError:
            raise AssertionError(f"the connection was still open after {seconds} s") from None


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(service: GranianServer) -> None:
    sock = connect(service.base_url)
    sock.sendall(b"GET /health/live HTTP/1.1\r\nHost: orders\r\n\r\n")
    answered = sock.recv(65536)
    assert answered.startswith(b"HTTP/1.1 200"), answered
    started = time.monotonic()
    assert closed_within(sock, IDLE_TIMEOUT + 5) == b""
    assert time.monotonic() - started >= IDLE_TIMEOUT - 0.5  # kept while within the timeout


def test_a_request_head_with_bare_cr_line_endings_is_dropped_by_the_idle_timeout(service: GranianServer) -> None:
    """Granian's parser neither refuses nor answers bare CR (RFC 9112 section 2.2 says refuse); the wait for the
    end of the head is what bounds it: ``HTTP_IDLE_TIMEOUT``, then the connection is closed or refused."""
    sock = connect(service.base_url)
    sock.sendall(b"GET /health/live HTTP/1.1\rHost: orders\rX-User: alice\r\r")
    raw = closed_within(sock, IDLE_TIMEOUT + 5)
    response = parse_response(raw)
    assert response is None or response.status == 400, raw
