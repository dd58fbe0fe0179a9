"""Bad input always gets a clear 4xx problem-details body, and nothing is written."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from orders_service.orders.schemas import OrderCreate
from tests.conftest import Catalog

Client = AsyncTestClient[Litestar]
JSON_ALICE = {"X-User": "alice", "Content-Type": "application/json"}
INT_MAX = 2**31 - 1


def line(product_id: object = 1, qty: object = 1) -> dict[str, object]:
    return {"product_id": product_id, "qty": qty}


BAD_BODIES: dict[str, tuple[object, str]] = {
    # name: (body, the key named in the error)
    "no items": ({"items": []}, "items"),
    "too many lines": ({"items": [line(1, 1)] * 101}, "items"),
    "items missing": ({}, "items"),  # reported as "Object missing required field `items`"
    "items not a list": ({"items": {"product_id": 1}}, "items"),
    "items null": ({"items": None}, "items"),
    "line not an object": ({"items": [1]}, "items[0]"),
    "zero qty": ({"items": [line(qty=0)]}, "items[0].qty"),
    "negative qty": ({"items": [line(qty=-3)]}, "items[0].qty"),
    "qty beyond integer": ({"items": [line(qty=INT_MAX + 1)]}, "items[0].qty"),
    "fractional qty": ({"items": [line(qty=1.5)]}, "items[0].qty"),
    "qty as string": ({"items": [line(qty="2")]}, "items[0].qty"),
    "qty as boolean": ({"items": [line(qty=True)]}, "items[0].qty"),
    "zero product id": ({"items": [line(product_id=0)]}, "items[0].product_id"),
    "product id beyond integer": ({"items": [line(product_id=INT_MAX + 1)]}, "items[0].product_id"),
    "product id as string": ({"items": [line(product_id="1")]}, "items[0].product_id"),
    "product id missing": ({"items": [{"qty": 1}]}, "items[0]"),
    "unknown field in line": ({"items": [{**line(), "price_cents": 1}]}, "items[0]"),
    "unknown top-level field": ({"items": [line()], "user_id": "mallory"}, "data"),
    "body is a list": ([line()], "data"),
    "body is a number": (42, "data"),
    "body is null": (None, "data"),
}


@pytest.mark.parametrize("case", BAD_BODIES, ids=list(BAD_BODIES))
async def test_invalid_body_is_400_naming_the_field_and_writes_nothing(
    client: Client, catalog: Catalog, case: str
) -> None:
    catalog.add(1, stock=10)
    body, key = BAD_BODIES[case]
    response = await client.post("/orders", content=json.dumps(body), headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    assert problem["status"] == 400
    assert problem["title"] == "Bad Request"
    assert any(error["key"].startswith(key) or f"`{key}`" in error["message"] for error in problem["errors"]), problem
    assert catalog.stock(1) == 10
    assert catalog.order_count() == 0


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"items": [', b"not json", b'{"items": [{"product_id": 1, "qty": 1}]} trailing', b"\xff\xfe"],
    ids=["empty", "open brace", "truncated", "not json", "trailing garbage", "not utf-8"],
)
async def test_malformed_json_is_400_and_writes_nothing(client: Client, catalog: Catalog, raw: bytes) -> None:
    catalog.add(1, stock=10)
    response = await client.post("/orders", content=raw, headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["status"] == 400
    assert response.json()["detail"]
    assert catalog.order_count() == 0


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
async def test_non_json_content_type_is_415_and_writes_nothing(
    client: Client, catalog: Catalog, content_type: str | None
) -> None:
    catalog.add(1, stock=10)
    headers = {"X-User": "alice"} | ({"Content-Type": content_type} if content_type else {})
    response = await client.post("/orders", content=b'{"items":[{"product_id":1,"qty":1}]}', headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["detail"]
    assert catalog.stock(1) == 10


async def test_json_with_charset_is_accepted(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    headers = {"X-User": "alice", "Content-Type": "application/json; charset=utf-8"}
    response = await client.post("/orders", content=b'{"items":[{"product_id":1,"qty":1}]}', headers=headers)
    assert response.status_code == 200


async def test_unauthenticated_bad_body_is_401_first(client: Client, catalog: Catalog) -> None:
    response = await client.post("/orders", content=b"{", headers={"Content-Type": "application/json"})
    assert response.status_code == 401


async def test_unknown_route_and_wrong_method_are_4xx_problems(client: Client, catalog: Catalog) -> None:
    missing = await client.get("/nope", headers={"X-User": "alice"})
    assert missing.status_code == 404
    assert missing.json()["status"] == 404
    wrong_method = await client.delete("/orders", headers={"X-User": "alice"})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["status"] == 405


async def test_oversized_body_is_413_and_writes_nothing(client: Client, catalog: Catalog) -> None:
    catalog.add(1, stock=10)
    padding = " " * (64 * 1024)
    body = '{"items": [{"product_id": 1, "qty": 1}]' + padding + "}"
    response = await client.post("/orders", content=body, headers=JSON_ALICE)
    assert response.status_code == 413
    assert response.json()["status"] == 413
    assert catalog.order_count() == 0


VALIDATION_CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (request, the part the detail names, the errors' source)
    "header": (
        {
            "method": "POST",
            "url": "/orders",
            "headers": {**JSON_ALICE, "Idempotency-Key": ""},
            "json": {"items": [line()]},
        },
        "headers",
        "header",
    ),
    "query": (
        {"method": "GET", "url": "/orders/me?limit=0", "headers": {"X-User": "alice"}},
        "query parameters",
        "query",
    ),
    "body": ({"method": "POST", "url": "/orders", "headers": JSON_ALICE, "json": {"items": []}}, "body", "body"),
}


@pytest.mark.parametrize("case", VALIDATION_CASES, ids=list(VALIDATION_CASES))
async def test_a_validation_error_names_the_part_of_the_request(client: Client, catalog: Catalog, case: str) -> None:
    request, part, source = VALIDATION_CASES[case]
    response = await client.request(**request)
    assert response.status_code == 400
    assert response.json()["detail"] == f"Validation failed for the request {part}"
    assert {error["source"] for error in response.json()["errors"]} == {source}


LINE = b'{"product_id": 1, "qty": 1}'
NOT_UTF8_BODIES = {
    "top-level key": b'{"\xff\xfe": 1, "items": [' + LINE + b"]}",
    "key after items": b'{"items": [' + LINE + b'], "\xff\xfe": 1}',
    "key in a line": b'{"items": [{"product_id": 1, "qty": 1, "\xc3\x28": 1}]}',
    "surrogate in a key": b'{"items": [{"product_id": 1, "\xed\xa0\x80": 1}]}',
    "known key spoilt": b'{"items\xff": [' + LINE + b"]}",
    "value of a repeated key": b'{"items": "\xff", "items": [' + LINE + b"]}",
    "outside strings": b'{"items": [' + LINE + b"]\xff}",
}


@pytest.mark.parametrize("raw", NOT_UTF8_BODIES.values(), ids=list(NOT_UTF8_BODIES))
async def test_invalid_utf8_anywhere_is_400_and_writes_nothing(client: Client, catalog: Catalog, raw: bytes) -> None:
    catalog.add(1, stock=10)
    response = await client.post("/orders", content=raw, headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert (response.json()["status"], response.json()["title"]) == (400, "Bad Request")
    assert (catalog.order_count(), catalog.stock(1)) == (0, 10)


REPEATED_KEYS = {
    "items twice": b'{"items": [{"product_id": 1, "qty": 1}], "items": [{"product_id": 2, "qty": 1}]}',
    "qty twice": b'{"items": [{"product_id": 1, "qty": 1, "qty": 5}]}',
    "product_id twice": b'{"items": [{"product_id": 1, "product_id": 2, "qty": 1}]}',
    "in the second line": b'{"items": [{"product_id": 1, "qty": 1}, {"qty": 1, "product_id": 2, "qty": 3}]}',
    "escaped spelling": b'{"items": [{"product_id": 1, "qty": 1, "q\\u0074y": 5}]}',
    "first value a list of lines": b'{"items": [{"product_id": 2, "qty": 1}], "items": [{"product_id": 1, "qty": 1}]}',
}


@pytest.mark.parametrize("raw", REPEATED_KEYS.values(), ids=list(REPEATED_KEYS))
async def test_a_key_given_twice_in_an_object_is_400_and_writes_nothing(
    client: Client, catalog: Catalog, raw: bytes
) -> None:
    """msgspec keeps the last value; another parser would keep the first: never guess what was ordered."""
    catalog.add(1, stock=10)
    catalog.add(2, stock=10)
    response = await client.post("/orders", content=raw, headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    assert "same key more than once" in response.json()["detail"]
    assert (catalog.order_count(), catalog.stock(1), catalog.stock(2)) == (0, 10, 10)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"items": [{"product_id": 1, "qty": 1}, {"product_id": 1, "qty": 2}]}',  # one key per object
        b'{"it\\u0065ms": [{"q\\u0074y": 3, "product_id": 1}]}',  # escapes spell the same keys
        b' {\n\t"items" : [ {"product_id" :1 ,"qty":3} ] }\r\n',
    ],
    ids=["same product on two lines", "escaped keys", "whitespace everywhere"],
)
async def test_bodies_every_json_parser_reads_alike_are_accepted(client: Client, catalog: Catalog, raw: bytes) -> None:
    catalog.add(1, stock=10)
    response = await client.post("/orders", content=raw, headers=JSON_ALICE)
    assert response.status_code == 200, response.text
    assert catalog.stock(1) == 7


def test_the_repeated_key_check_holds_for_the_order_schema() -> None:
    """OrderCreateDTO counts colons: exact only while every field is required and no value is a string."""

    def check(info: msgspec.inspect.Type) -> None:
        if isinstance(info, msgspec.inspect.Metadata):
            check(info.type)
        elif isinstance(info, msgspec.inspect.StructType):
            for field in info.fields:
                assert field.required, f"{info.cls.__name__}.{field.name} has a default: update check_raw"
                check(field.type)
        elif isinstance(info, msgspec.inspect.ListType):
            check(info.item_type)
        else:
            assert isinstance(info, msgspec.inspect.IntType), f"{info}: a value that is not an int, update check_raw"

    check(msgspec.inspect.type_info(OrderCreate))


def rejected_for_quantity() -> float:
    return REGISTRY.get_sample_value("order_create_failures_total", {"reason": "quantity_too_large"}) or 0.0


COMBINED_OVERFLOWS: dict[str, tuple[list[dict[str, object]], list[int]]] = {
    # name: (lines, the products named)
    "max and 2": ([line(1, INT_MAX), line(1, 2)], [1]),
    "100 lines of max": ([line(1, INT_MAX)] * 100, [1]),
    "two products": ([line(2, INT_MAX), line(1, 5), line(2, 1), line(1, INT_MAX)], [1, 2]),
    "one of two": ([line(1, 1), line(2, INT_MAX), line(2, INT_MAX)], [2]),
}


@pytest.mark.parametrize("case", COMBINED_OVERFLOWS, ids=list(COMBINED_OVERFLOWS))
async def test_lines_adding_up_beyond_integer_are_rejected_before_the_database(
    client: Client, catalog: Catalog, case: str
) -> None:
    catalog.add(1, price_cents=1, stock=INT_MAX)
    catalog.add(2, price_cents=1, stock=INT_MAX)
    lines, named = COMBINED_OVERFLOWS[case]
    before = rejected_for_quantity()
    response = await client.post("/orders", json={"items": lines}, headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    problem = response.json()
    assert (problem["title"], problem["reason"], problem["product_ids"]) == (
        "Order rejected",
        "quantity_too_large",
        named,
    )
    assert str(INT_MAX) in problem["detail"]
    assert (catalog.order_count(), catalog.stock(1), catalog.stock(2)) == (0, INT_MAX, INT_MAX)
    assert rejected_for_quantity() == before + 1


async def test_lines_adding_up_to_exactly_the_largest_integer_are_one_item(client: Client, catalog: Catalog) -> None:
    catalog.add(1, price_cents=1, stock=INT_MAX)
    response = await client.post("/orders", json={"items": [line(1, INT_MAX - 1), line(1, 1)]}, headers=JSON_ALICE)
    assert response.status_code == 200, response.text
    assert response.json()["items"] == [{"product_id": 1, "qty": INT_MAX, "price_cents": 1}]
    assert catalog.stock(1) == 0
    cancelled = await client.post(f"/orders/{response.json()['id']}/cancel", headers=JSON_ALICE)
    assert cancelled.status_code == 200
    assert catalog.stock(1) == INT_MAX


def other_spellings(order_id: int) -> dict[str, tuple[str, str]]:
    """Other URLs of ``order_id`` and of its cancel, that Python's int() or a lenient router reads as the order's.

    Percent-encoded as a client sends them.
    """
    digits = str(order_id)
    segments = {
        "plus sign": f"%2B{digits}",
        "leading zero": f"0{digits}",
        "underscore": f"0_{digits}",
        "leading space": f"%20{digits}",
        "trailing space": f"{digits}%20",
        "tab": f"%09{digits}",
        "arabic-indic digits": quote("".join(chr(0x0660 + int(digit)) for digit in digits)),
        "fullwidth digits": quote("".join(chr(0xFF10 + int(digit)) for digit in digits)),
        "percent-encoded digits": "".join(f"%{ord(digit):02X}" for digit in digits),
    }
    spellings = {name: (f"/orders/{segment}", f"/orders/{segment}/cancel") for name, segment in segments.items()}
    spellings["trailing slash"] = (f"/orders/{digits}/", f"/orders/{digits}/cancel/")
    spellings["doubled slash"] = (f"/orders//{digits}", f"/orders//{digits}/cancel")
    spellings["encoded slash"] = (f"/orders/{digits}%2F", f"/orders/{digits}%2Fcancel")
    return spellings


@pytest.mark.parametrize("spelling", list(other_spellings(1)))
async def test_an_order_has_one_url_other_spellings_are_404(client: Client, catalog: Catalog, spelling: str) -> None:
    catalog.add(1, stock=10)
    order = (await client.post("/orders", json={"items": [line(1, 2)]}, headers=JSON_ALICE)).json()
    read_path, cancel_path = other_spellings(order["id"])[spelling]
    missing = await client.get(f"/orders/{order['id'] + 1000}", headers=JSON_ALICE)

    read = await client.get(read_path, headers=JSON_ALICE)
    cancel = await client.post(cancel_path, headers=JSON_ALICE)

    assert read.status_code == 404, read.text
    assert read.json().keys() == missing.json().keys()
    assert read.json()["title"] == missing.json()["title"]
    assert cancel.status_code == 404, cancel.text
    assert catalog.stock(1) == 8
    assert (await client.get(f"/orders/{order['id']}", headers=JSON_ALICE)).json()["status"] == "placed"


BAD_LIMITS = ["%2B5", "%D9%A5", "1_0", "1e1", "10.0", "%205", "05", "0x5", "5%20", "", "5&limit=6"]


@pytest.mark.parametrize("limit", BAD_LIMITS)
async def test_limit_is_plain_decimal_given_once(client: Client, catalog: Catalog, limit: str) -> None:
    response = await client.get(f"/orders/me?limit={limit}", headers=JSON_ALICE)
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["key"] == "limit"
    assert response.json()["errors"][0]["source"] == "query"


async def test_cursor_given_twice_is_400(client: Client, catalog: Catalog) -> None:
    response = await client.get("/orders/me?cursor=a&cursor=b", headers=JSON_ALICE)
    assert response.status_code == 400
    assert response.json()["errors"] == [
        {"message": "`cursor` given more than once", "key": "cursor", "source": "query"}
    ]


async def test_plain_limits_and_unknown_parameters_are_accepted(client: Client, catalog: Catalog) -> None:
    for query in ("limit=5", "limit=200", "limit=1&other=x", "other=1&other=2"):
        assert (await client.get(f"/orders/me?{query}", headers=JSON_ALICE)).status_code == 200, query


@pytest.mark.parametrize("coding", ["gzip", "br", "identity, gzip", ""])
async def test_a_content_coding_is_415(client: Client, catalog: Catalog, coding: str) -> None:
    """The body is read as it came: a coding the service would not undo is refused (RFC 7694)."""
    catalog.add(1, stock=10)
    headers = {**JSON_ALICE, "Content-Encoding": coding}
    response = await client.post("/orders", content=b'{"items": [{"product_id": 1, "qty": 1}]}', headers=headers)
    assert response.status_code == 415, response.text
    assert "Content-Encoding" in response.json()["detail"]
    assert catalog.order_count() == 0


@pytest.mark.parametrize(("length", "status"), [(1, 200), (255, 200), (256, 400)])
async def test_an_idempotency_key_of_up_to_255_characters_is_taken(
    client: Client, catalog: Catalog, length: int, status: int
) -> None:
    """The column holds 255: the longest key places and replays its order; one more character is a clear 400."""
    catalog.add(1, stock=10)
    key = "k" * length
    first = await client.post("/orders", json={"items": [line()]}, headers={**JSON_ALICE, "Idempotency-Key": key})
    assert first.status_code == status, first.text
    if status == 200:
        again = await client.post("/orders", json={"items": [line()]}, headers={**JSON_ALICE, "Idempotency-Key": key})
        assert (again.status_code, again.json()["id"]) == (200, first.json()["id"])
        assert again.headers["idempotent-replayed"] == "true"
        assert catalog.order_count() == 1
    else:
        assert first.json()["errors"][0]["key"] == "idempotency_key"
        assert catalog.order_count() == 0
