"""What the Gateway forwards, byte for byte, through real Granian: X-User is UTF-8, one user, no folding."""

from __future__ import annotations

import json

import pytest

from tests.conftest import Catalog
from tests.support.granian import GranianServer
from tests.support.rawhttp import RawResponse, raw_request

ORDER = json.dumps({"items": [{"product_id": 1, "qty": 1}]}).encode()


def post_order(server: GranianServer, headers: list[tuple[bytes, bytes]]) -> RawResponse:
    return raw_request(server.base_url, "POST", "/orders", [(b"Content-Type", b"application/json"), *headers], ORDER)


def list_mine(server: GranianServer, headers: list[tuple[bytes, bytes]]) -> RawResponse:
    return raw_request(server.base_url, "GET", "/orders/me", headers)


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("zoë".encode(), "zoë"),
        (b"\talice \t", "alice"),
        ("alice\u00a0".encode(), "alice\u00a0"),  # a UTF-8 no-break space is part of the name
        ("é".encode() * 255, "é" * 255),  # 255 characters in 510 bytes fit the column
    ],
    ids=["utf-8", "ascii blanks trimmed", "utf-8 nbsp kept", "255 characters"],
)
def test_x_user_is_utf8_stored_and_returned_exactly(
    granian: GranianServer, catalog: Catalog, raw: bytes, stored: str
) -> None:
    catalog.add(1, stock=10)
    placed = post_order(granian, [(b"X-User", raw)])
    assert placed.status == 200, placed.body
    assert placed.json()["user_id"] == stored
    assert [order["user_id"] for order in list_mine(granian, [(b"X-User", raw)]).json()] == [stored]
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE user_id = :u", u=stored) == 1


@pytest.mark.parametrize(
    ("raw", "detail"),
    [
        (b"alice\xa0", "not valid UTF-8"),  # latin-1 no-break space, which str.strip() used to eat
        (b"\x85alice", "not valid UTF-8"),  # latin-1 NEL, likewise
        (b"alice, bob", "comma"),  # what a proxy makes of two folded X-User headers
        ("ali\u0085ce".encode(), "control character"),  # a C1 control character, valid UTF-8
        ("é".encode() * 256, "longer than 255"),
    ],
    ids=["latin-1 nbsp", "latin-1 nel", "folded", "c1 control", "256 characters"],
)
def test_x_user_that_is_not_one_clean_name_is_400_and_writes_nothing(
    granian: GranianServer, catalog: Catalog, raw: bytes, detail: str
) -> None:
    catalog.add(1, stock=10)
    for response in (post_order(granian, [(b"X-User", raw)]), list_mine(granian, [(b"X-User", raw)])):
        assert response.status == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert detail in response.json()["detail"]
    assert catalog.order_count() == 0


@pytest.mark.parametrize("raw", [b"ali\x01ce", b"alice\x7f"], ids=["c0 control", "del"])
def test_x_user_with_an_ascii_control_character_is_400(granian: GranianServer, catalog: Catalog, raw: bytes) -> None:
    """Granian's HTTP parser may refuse these bytes before the app sees them: a 400 either way, nothing written."""
    catalog.add(1, stock=10)
    assert post_order(granian, [(b"X-User", raw)]).status == 400
    assert catalog.order_count() == 0


@pytest.mark.parametrize("header", [b"X-User", b"Idempotency-Key"])
def test_a_header_sent_twice_is_400_and_writes_nothing(granian: GranianServer, catalog: Catalog, header: bytes) -> None:
    catalog.add(1, stock=10)
    headers = [(b"X-User", b"alice"), (b"Idempotency-Key", b"k-1")]
    response = post_order(granian, [*headers, (header, b"second")])
    assert response.status == 400
    assert f"{header.decode()} header given more than once" in response.json()["detail"]
    assert catalog.order_count() == 0


@pytest.mark.parametrize(
    "framing",
    [[], [(b"Content-Length", b"0")], [(b"Transfer-Encoding", b"chunked")]],
    ids=["no content-length (curl -X POST)", "content-length 0", "empty chunked body"],
)
def test_an_empty_body_is_400_saying_so(
    granian: GranianServer, catalog: Catalog, framing: list[tuple[bytes, bytes]]
) -> None:
    headers = [(b"X-User", b"alice"), (b"Content-Type", b"application/json"), *framing]
    body = b"0\r\n\r\n" if framing and framing[0][0] == b"Transfer-Encoding" else b""
    response = raw_request(granian.base_url, "POST", "/orders", headers, body, content_length=False)
    assert response.status == 400
    assert response.json()["detail"].startswith("the request body is empty")
    assert "errors" not in response.json()
    assert catalog.order_count() == 0
