"""The published OpenAPI document is complete, and the live service keeps to it (schemathesis)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from litestar import Litestar
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate
from prometheus_client import REGISTRY
from schemathesis.openapi import from_url
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from orders_service.app import create_app
from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.granian import LIVE_SERVERS, OBSERVED_STATUSES, GranianServer, record_statuses

ERROR_STATUSES = {
    "placeOrder": {"400", "401", "408", "413", "415", "422", "499", "503"},
    "listMyOrders": {"400", "401", "503"},
    "getOrder": {"400", "401", "404", "503"},
    "cancelOrder": {"400", "401", "404", "408", "409", "413", "499", "503"},
}


@pytest.fixture
def openapi(client: AsyncTestClient[Litestar]) -> dict[str, Any]:
    document: dict[str, Any] = client.app.openapi_schema.to_schema()
    return document


def operations(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        operation["operationId"]: operation
        for path in document["paths"].values()
        for operation in path.values()
        if isinstance(operation, dict) and "operationId" in operation
    }


# The document of the default AUTH_MODE (x-user) as it was before AUTH_MODE=jwt existed: that mode's contract.
X_USER_DOCUMENT = Path(__file__).with_name("openapi_x_user.json")


async def test_the_default_modes_document_is_exactly_the_x_user_one(client: AsyncTestClient[Litestar]) -> None:
    served = (await client.get("/schema/openapi.json")).json()
    assert served == json.loads(X_USER_DOCUMENT.read_text(encoding="utf-8"))


def test_the_served_document_is_valid_openapi_3_1(client: AsyncTestClient[Litestar]) -> None:
    document = client.app.openapi_schema.to_schema()
    assert document["openapi"].startswith("3.1")
    validate(document)  # openapi-spec-validator: raises on any violation


def test_every_response_header_has_a_schema_and_every_503_a_retry_after(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                for name, header in (response.get("headers") or {}).items():
                    assert "schema" in header or "content" in header, (method, path, status, name)
                if status == "503":
                    assert response["headers"]["Retry-After"]["schema"]["type"] == "integer", (method, path)


def test_the_readiness_503_and_its_body_are_documented(openapi: dict[str, Any]) -> None:
    readiness = operations(openapi)["readiness"]["responses"]["503"]
    body = readiness["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert set(openapi["components"]["schemas"][body]["properties"]) == {"status", "reason", "events"}


def test_errors_of_unrouted_requests_are_documented_as_problems(openapi: dict[str, Any]) -> None:
    for operation_id in ERROR_STATUSES:
        default = operations(openapi)[operation_id]["responses"]["default"]
        assert "application/problem+json" in default["content"]
        assert "404" in default["description"]
        assert "405" in default["description"]


def test_every_get_has_a_head_with_its_statuses_and_headers_and_no_body(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        assert ("get" in item) == ("head" in item), path
        if "get" not in item:
            continue
        get, head = item["get"]["responses"], item["head"]["responses"]
        assert head.keys() == get.keys(), path
        for status, response in head.items():
            assert "content" not in response, (path, status)
            assert response.get("headers") == get[status].get("headers"), (path, status)
        assert item["head"]["operationId"] == item["get"]["operationId"] + "Head"


def test_every_route_has_an_operation_id(openapi: dict[str, Any]) -> None:
    for path, item in openapi["paths"].items():
        for method, operation in item.items():
            if method in {"get", "head", "post", "put", "patch", "delete"}:
                assert operation.get("operationId"), f"{method.upper()} {path}"


def test_error_statuses_are_documented_with_the_problem_shape(openapi: dict[str, Any]) -> None:
    documented = operations(openapi)
    for operation_id, statuses in ERROR_STATUSES.items():
        responses = documented[operation_id]["responses"]
        assert statuses <= responses.keys(), operation_id
        for status in statuses:
            content = responses[status]["content"]
            assert "application/problem+json" in content, (operation_id, status)


def test_headers_and_examples_are_documented(openapi: dict[str, Any]) -> None:
    documented = operations(openapi)
    scheme = openapi["components"]["securitySchemes"]["GatewayUser"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "X-User")
    assert all(
        op.get("security") == [{"GatewayUser": []}] for op in documented.values() if op["operationId"] in ERROR_STATUSES
    )
    place = documented["placeOrder"]
    assert any(p["name"] == "Idempotency-Key" and p["in"] == "header" for p in place["parameters"])
    assert "Idempotent-Replayed" in place["responses"]["200"]["headers"]
    body_ref = place["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    body_schema = openapi["components"]["schemas"][body_ref.rsplit("/", 1)[-1]]
    assert body_schema["properties"]["items"]["examples"]
    assert (body_schema["properties"]["items"]["minItems"], body_schema["properties"]["items"]["maxItems"]) == (1, 100)
    order_schema = openapi["components"]["schemas"]["OrderRead"]
    assert all("examples" in field for name, field in order_schema["properties"].items() if name != "items")
    listing = documented["listMyOrders"]
    assert {p["name"] for p in listing["parameters"]} == {"limit", "cursor"}
    assert "Link" in listing["responses"]["200"]["headers"]


async def test_schema_and_docs_are_served_and_can_be_switched_off(settings: Settings) -> None:
    async with AsyncTestClient(app=create_app(settings)) as client:
        assert (await client.get("/schema/openapi.json")).status_code == 200
        assert (await client.get("/schema/swagger")).status_code == 200
    off = Settings.from_env({**settings.as_env(), "OPENAPI_ENABLED": "false"})
    async with AsyncTestClient(app=create_app(off)) as client:
        assert (await client.get("/schema/openapi.json")).status_code == 404
        assert (await client.get("/schema/swagger-ui/swagger-ui-bundle.js")).status_code == 404


async def test_the_docs_page_needs_no_other_host(client: AsyncTestClient[Litestar]) -> None:
    """Most clusters have no internet: Swagger UI's files come from the service itself."""
    page = (await client.get("/schema/swagger")).text
    referenced = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page)
    assert referenced, page
    for url in referenced:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status_code == 200, url
        assert len(asset.content) > 1000, url
    assert not re.search(r"https?://", page.split("SwaggerUIBundle(", 1)[0])


def test_live_responses_conform_to_the_schema(granian: GranianServer, catalog: Catalog) -> None:
    """Schemathesis generates requests from the live schema: no 5xx, no response outside the schema."""
    for product_id in range(1, 4):
        catalog.add(product_id, price_cents=100 * product_id, stock=1_000_000)
    schema = from_url(f"{granian.base_url}/schema/openapi.json")
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        excluded = [ignored_auth]
        if operation.label in {"GET /orders/me", "HEAD /orders/me", "POST /orders"}:
            # Schema-valid is not enough there: made-up cursors and made-up product ids are rightly 400s.
            excluded.append(positive_data_acceptance)

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def conforms(case: Any) -> None:
            # Any non-blank X-User is a user (the Gateway authenticated it), so "invalid credentials" don't exist.
            case.call_and_validate(headers={"X-User": "schemathesis"}, excluded_checks=excluded, timeout=10)  # noqa: B023 - run before the next iteration

        conforms()
        tested.append(operation.label)
    assert len(tested) >= 6, tested


def test_every_status_this_run_observed_is_documented(openapi: dict[str, Any]) -> None:
    """Every status the service answered during this test run (Granian servers and in-process apps, schemathesis
    included) is documented on its operation: this test runs last."""
    observed = set(OBSERVED_STATUSES)
    for server in LIVE_SERVERS:
        record_statuses(server)
        observed |= OBSERVED_STATUSES
    for family in REGISTRY.collect():
        for sample in family.samples:
            if sample.name == "http_requests_total" and sample.value > 0:
                observed.add((sample.labels["path"], sample.labels["method"], sample.labels["status"]))
    undocumented = set()
    for path, method, status in observed:
        if path not in openapi["paths"]:
            continue  # <unrouted>, the schema and docs routes: not operations of the API
        responses = openapi["paths"][path][method.lower()]["responses"]
        if status not in responses:
            undocumented.add((method, path, status))
    assert {path for path, _, _ in observed} & set(openapi["paths"]), "nothing was observed"
    assert not undocumented
