"""Bad input always gets a clear 4xx problem-details body, and nothing is written."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

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
