"""HEAD on every GET route, under the real Granian: GET's status and headers, no body."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.conftest import Catalog
from tests.support.granian import GranianServer, wait_for_access_line
from tests.support.rawhttp import connect, read_until_closed
from tests.support.scrape import requests_total, scrape

ALICE = {"X-User": "alice"}


def head_then_get(server: GranianServer, path: str) -> tuple[bytes, bytes]:
    """HEAD then GET of ``path`` pipelined on one connection: the raw HEAD response and the raw GET response.

    A body after the HEAD response would be read as the start of the GET response.
    """
    request = f"{{}} {path} HTTP/1.1\r\nHost: orders\r\nX-User: alice\r\n"
    with connect(server.base_url) as sock:
        sock.sendall(
            request.format("HEAD").encode() + b"\r\n" + request.format("GET").encode() + b"Connection: close\r\n\r\n"
        )
        raw = read_until_closed(sock)
    head_response, separator, get_response = raw.partition(b"\r\n\r\n")
    return head_response + separator, get_response


def headers_of(raw: bytes) -> dict[str, str]:
    lines = raw.decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value for name, value in (line.split(": ", 1) for line in lines if line)}


@pytest.fixture
def order_id(granian: GranianServer, catalog: Catalog) -> int:
    catalog.add(1, stock=10)
    response = httpx.post(f"{granian.base_url}/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers=ALICE)
    assert response.status_code == 200
    return int(response.json()["id"])


@pytest.mark.parametrize(
    "path", ["/health", "/health/live", "/orders/me", "/orders/me?limit=1", "{order}", "{missing}"]
)
def test_head_answers_as_get_without_a_body(granian: GranianServer, order_id: int, path: str) -> None:
    path = path.format(order=f"/orders/{order_id}", missing=f"/orders/{order_id + 1000}")
    head_raw, get_raw = head_then_get(granian, path)
    got = httpx.get(f"{granian.base_url}{path}", headers=ALICE)
    assert head_raw.split(b" ")[1].decode() == str(got.status_code), head_raw
    assert get_raw.startswith(f"HTTP/1.1 {got.status_code} ".encode()), get_raw  # nothing in between
    head_headers = headers_of(head_raw)
    assert head_headers["content-type"] == got.headers["content-type"]
    assert head_headers["content-length"] == str(len(got.content))
    assert head_headers["x-request-id"]


def test_head_of_an_order_under_another_spelling_is_404(granian: GranianServer, order_id: int) -> None:
    assert httpx.head(f"{granian.base_url}/orders/%2B{order_id}", headers=ALICE).status_code == 404
    assert httpx.head(f"{granian.base_url}/orders/me?limit=1e1", headers=ALICE).status_code == 400
    assert httpx.head(f"{granian.base_url}/orders/{order_id}").status_code == 401


def test_head_is_counted_under_its_own_method_and_writes_nothing(granian: GranianServer, catalog: Catalog) -> None:
    before = scrape(granian)
    for url, expected in (("/orders/me", 200), ("/orders", 405)):
        request_id = f"head-{uuid.uuid4().hex}"
        response = httpx.head(f"{granian.base_url}{url}", headers={**ALICE, "X-Request-ID": request_id})
        assert response.status_code == expected
        wait_for_access_line(granian, request_id)  # logged once the request is counted
    after = scrape(granian)
    for path, status in (("/orders/me", "200"), ("<unrouted>", "405")):
        assert requests_total(after, path, "HEAD", status) == requests_total(before, path, "HEAD", status) + 1
    assert catalog.order_count() == 0
