"""OpenTelemetry tracing, in-process with the SDK's in-memory exporter: one trace per request, continuing
``traceparent``, a child span per SQL statement; nothing at all when tracing is off. Then once under
real Granian, exporting to a real OTLP/HTTP receiver."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from litestar import Litestar, get
from litestar.plugins.opentelemetry import OpenTelemetryPlugin
from litestar.testing import AsyncTestClient
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, format_span_id, format_trace_id

from orders_service.app import create_app
from orders_service.config import Settings
from orders_service.observability.tracing_plugin import TracingPlugin
from tests.conftest import Catalog
from tests.support.granian import start_service
from tests.support.otlp_sink import otlp_sink

Client = AsyncTestClient[Litestar]
ALICE = {"X-User": "alice"}
GATEWAY_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
GATEWAY_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def otel_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)


@pytest.fixture
async def traced(
    otel_on: None, settings: Settings, catalog: Catalog, exporter: InMemorySpanExporter
) -> AsyncIterator[Client]:
    async with AsyncTestClient(app=create_app(settings, span_processor=SimpleSpanProcessor(exporter))) as client:
        await client.get("/orders/me", headers=ALICE)  # the pool's first connection: the dialect looks around
        exporter.clear()
        yield client


def one_trace(spans: tuple[ReadableSpan, ...]) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """The root server span of the single trace ``spans`` make, and its SQL spans."""
    assert len({span.context.trace_id for span in spans}) == 1
    roots = [span for span in spans if span.kind == SpanKind.SERVER]
    assert len(roots) == 1
    sql = [span for span in spans if span.kind == SpanKind.CLIENT]
    assert len(sql) == len(spans) - 1  # no receive/send spans
    return roots[0], sql


def reaches(span: ReadableSpan, ancestor: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> bool:
    by_id = {s.context.span_id: s for s in spans}
    current: ReadableSpan | None = span
    while current is not None and current.parent is not None:
        if current.parent.span_id == ancestor.context.span_id:
            return True
        current = by_id.get(current.parent.span_id)
    return False


async def test_an_order_is_one_trace_with_a_span_per_statement(
    traced: Client, catalog: Catalog, exporter: InMemorySpanExporter
) -> None:
    catalog.add(1, stock=10)
    response = await traced.post(
        "/orders", json={"items": [{"product_id": 1, "qty": 2}]}, headers={**ALICE, "Idempotency-Key": "k-1"}
    )
    assert response.status_code == 200

    spans = exporter.get_finished_spans()
    server, sql = one_trace(spans)
    assert server.parent is None
    assert server.name == "POST /orders"
    assert server.attributes is not None
    assert server.attributes["http.route"] == "/orders"
    assert server.resource.attributes["service.name"] == "orders-service"
    assert len(sql) == 1  # one statement places the order and writes its key
    for span in sql:
        assert reaches(span, server, spans)
        attributes = dict(span.attributes or {})
        assert attributes["db.system"] == "postgresql"
        assert "db.statement.parameters" not in attributes
        assert not any("alice" in str(value) or "k-1" in str(value) for value in attributes.values())
    assert any("INSERT INTO" in str(dict(span.attributes or {})["db.statement"]) for span in sql)


async def test_a_gateway_traceparent_is_continued(traced: Client, exporter: InMemorySpanExporter) -> None:
    traceparent = f"00-{GATEWAY_TRACE_ID}-{GATEWAY_SPAN_ID}-01"
    response = await traced.get("/orders/me", headers={**ALICE, "traceparent": traceparent})
    assert response.status_code == 200

    spans = exporter.get_finished_spans()
    server, sql = one_trace(spans)
    assert format_trace_id(server.context.trace_id) == GATEWAY_TRACE_ID
    assert server.parent is not None
    assert server.parent.is_remote
    assert format_span_id(server.parent.span_id) == GATEWAY_SPAN_ID
    assert server.name == "GET /orders/me"
    assert len(sql) == 1
    assert reaches(sql[0], server, spans)


async def test_each_request_is_a_trace_of_its_own_named_by_its_route(
    traced: Client, catalog: Catalog, exporter: InMemorySpanExporter
) -> None:
    catalog.add(1, stock=10)
    order = (await traced.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers=ALICE)).json()
    assert (await traced.get(f"/orders/{order['id']}", headers=ALICE)).status_code == 200
    assert (await traced.get("/no/such/route")).status_code == 404

    roots = [span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert [span.name for span in roots] == ["POST /orders", "GET /orders/{order_id}", "GET"]
    assert len({span.context.trace_id for span in roots}) == 3


async def test_probes_and_scrapes_are_not_traced(traced: Client, exporter: InMemorySpanExporter) -> None:
    for path in ("/health", "/health/live", "/metrics"):
        assert (await traced.get(path)).status_code == 200
    assert exporter.get_finished_spans() == ()


async def test_log_lines_inside_a_request_carry_its_trace_id(
    traced: Client, app_with_tracing_logs: list[logging.LogRecord], exporter: InMemorySpanExporter
) -> None:
    assert (await traced.get("/log-something")).status_code == 200

    server = next(span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER)
    logged = [record for record in app_with_tracing_logs if record.getMessage() == "inside a request"]
    assert len(logged) == 1
    assert logged[0].trace_id == format_trace_id(server.context.trace_id)  # type: ignore[attr-defined]
    assert logged[0].span_id == format_span_id(server.context.span_id)  # type: ignore[attr-defined]


async def test_the_access_line_carries_the_trace_id(
    traced: Client, app_with_tracing_logs: list[logging.LogRecord], exporter: InMemorySpanExporter
) -> None:
    response = await traced.get("/orders/me", headers={**ALICE, "X-Request-ID": "traced-1"})
    assert response.headers["x-request-id"] == "traced-1"

    server = next(span for span in exporter.get_finished_spans() if span.kind == SpanKind.SERVER)
    access = [record for record in app_with_tracing_logs if record.name == "orders_service.access"]
    assert [record.request_id for record in access] == ["traced-1"]  # type: ignore[attr-defined]
    assert access[0].trace_id == format_trace_id(server.context.trace_id)  # type: ignore[attr-defined]


@pytest.fixture
def app_with_tracing_logs(traced: Client) -> Iterator[list[logging.LogRecord]]:
    """A route that logs, on the traced app, and the records the root logger's handlers receive."""

    @get("/log-something", sync_to_thread=False)
    def log_something() -> None:
        logging.getLogger("orders_service.test").warning("inside a request")

    traced.app.register(log_something)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    handler = Keep()
    root.addHandler(handler)  # after the app's own handler, whose filter has already run on the record
    yield records
    root.removeHandler(handler)


@pytest.mark.parametrize(
    "environment",
    [
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
        {"OTEL_SDK_DISABLED": "TRUE", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"},
        {},
    ],
    ids=["sdk-disabled", "sdk-disabled-traces-endpoint", "no-endpoint"],
)
async def test_off_means_no_plugin_and_no_spans(
    environment: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    catalog: Catalog,
    exporter: InMemorySpanExporter,
) -> None:
    for name in ("OTEL_SDK_DISABLED", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    app = create_app(settings, span_processor=SimpleSpanProcessor(exporter))
    assert not any(isinstance(plugin, TracingPlugin | OpenTelemetryPlugin) for plugin in app.plugins)
    async with AsyncTestClient(app=app) as client:
        assert (await client.get("/orders/me", headers=ALICE)).status_code == 200
    assert exporter.get_finished_spans() == ()


def test_the_traces_endpoint_alone_turns_tracing_on(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> None:
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:4318/v1/traces")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "orders-eu")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=test")
    app = create_app(settings)
    tracing = next(plugin for plugin in app.plugins if isinstance(plugin, TracingPlugin))
    assert any(isinstance(plugin, OpenTelemetryPlugin) for plugin in app.plugins)
    attributes = tracing.provider.resource.attributes
    assert (attributes["service.name"], attributes["deployment.environment"]) == ("orders-eu", "test")
    tracing.provider.shutdown()


def test_the_served_service_exports_its_spans_over_otlp_and_flushes_them_when_it_stops(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    """Real Granian (1 worker) and a real OTLP/HTTP receiver: spans leave the worker, the last ones at SIGTERM."""
    with otlp_sink(keep=True) as sink:
        env = {
            **os.environ,
            **settings.as_env(),
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
            "OTEL_EXPORTER_OTLP_ENDPOINT": sink.endpoint,
            "OTEL_SERVICE_NAME": "orders-e2e",
        }
        env.pop("OTEL_SDK_DISABLED", None)
        with start_service(["serve"], env, workers=1, log_dir=tmp_path) as server:
            traceparent = f"00-{GATEWAY_TRACE_ID}-{GATEWAY_SPAN_ID}-01"
            response = httpx.get(
                f"{server.base_url}/orders/me", headers={**ALICE, "traceparent": traceparent}, timeout=10
            )
            assert response.status_code == 200
            assert server.terminate() == 0  # before the batch's schedule delay: shutdown must export it
        spans = [
            (span, scope_spans.scope.name, resource_spans.resource)
            for body in sink.bodies
            for resource_spans in ExportTraceServiceRequest.FromString(body).resource_spans
            for scope_spans in resource_spans.scope_spans
            for span in scope_spans.spans
        ]
    assert len(spans) == 2, server.log()
    (server_span, _, resource), (sql_span, scope, _) = sorted(
        spans, key=lambda item: item[0].kind != Span.SPAN_KIND_SERVER
    )
    assert {attribute.key: attribute.value.string_value for attribute in resource.attributes}["service.name"] == (
        "orders-e2e"
    )
    assert server_span.name == "GET /orders/me"
    assert server_span.trace_id.hex() == GATEWAY_TRACE_ID
    assert server_span.parent_span_id.hex() == GATEWAY_SPAN_ID
    assert sql_span.kind == Span.SPAN_KIND_CLIENT
    assert scope == "opentelemetry.instrumentation.psycopg"
    assert sql_span.trace_id.hex() == GATEWAY_TRACE_ID
    assert sql_span.parent_span_id == server_span.span_id
