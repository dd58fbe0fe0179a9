"""The tracing plugin: Litestar's OpenTelemetry plugin, a span per SQL statement, the provider's life.

Imported only when tracing is on (see ``tracing.py``), so that, off, not even OpenTelemetry's modules
are loaded (about 5 MB per worker).

The provider is made with the app, that is in each Granian worker: the batch processor's export
thread runs in the process whose spans it exports. It is not the global provider: it is handed to
the ASGI middleware and to the request engine's connections, nothing else in the process traces.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins import InitPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from orders_service.observability.trace_ids import add_trace_ids_to_logs

if TYPE_CHECKING:
    from litestar.config.app import AppConfig
    from litestar.types import ASGIApp, Receive, Scope, Send

DEFAULT_SERVICE_NAME = "orders-service"
# Probes and scrapes every few seconds would drown the traces that matter.
UNTRACED_PATHS = [r"^/health", r"^/metrics$"]


def service_resource() -> Resource:
    """``service.name`` from ``OTEL_SERVICE_NAME`` (default ``orders-service``), plus ``OTEL_RESOURCE_ATTRIBUTES``."""
    from_env = OTELResourceDetector().detect().attributes
    return Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME, **from_env})


class TracingPlugin(InitPlugin):
    """Adds Litestar's OpenTelemetry plugin, traces the request engine's SQL, shuts the provider down with the app."""

    __slots__ = ("provider",)

    def __init__(self, engine: AsyncEngine, span_processor: SpanProcessor | None = None) -> None:
        """``span_processor``: where spans go (default: batched to the OTLP exporter the ``OTEL_*`` variables set)."""
        self.provider = TracerProvider(resource=service_resource())
        self.provider.add_span_processor(span_processor or BatchSpanProcessor(OTLPSpanExporter()))
        # Only the request engine: the readiness engine's SQL belongs to /health, which is not traced.
        event.listen(engine.sync_engine, "connect", self._trace_statements)
        super().__init__()

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        config = OpenTelemetryConfig(
            tracer_provider=self.provider,
            exclude=UNTRACED_PATHS,
            # The span is named when the request is routed (NameSpanByRoute); the path holds ids.
            scope_span_details_extractor=_method_only,
            # Spans for each ASGI message would only say when the body was read and written.
            exclude_spans=["receive", "send"],
        )
        app_config.plugins.append(OpenTelemetryPlugin(config))
        app_config.middleware.append(NameSpanByRoute())
        app_config.on_startup.append(add_trace_ids_to_logs)  # after Litestar has configured logging
        app_config.on_shutdown.append(self.shutdown)
        return app_config

    def _trace_statements(self, dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        """Pool connect hook: the psycopg connection's cursors make a span per execute, pipelined ones included.

        No parameter values in the spans (the instrumentation's default); the statement text is there.
        """
        PsycopgInstrumentor.instrument_connection(dbapi_connection.driver_connection, tracer_provider=self.provider)

    async def shutdown(self) -> None:
        """Export what is still buffered; blocks on the exporter, so off the event loop."""
        await asyncio.to_thread(self.provider.shutdown)


def _method_only(scope: Scope) -> tuple[str, dict[str, Any]]:
    return str(scope.get("method", "")), {}


class NameSpanByRoute(ASGIMiddleware):
    """Names the request's server span ``{method} {route}`` once routing has found the route template.

    The OpenTelemetry middleware wraps the whole app, so it starts the span before routing; a
    request that matches no route keeps the method alone as its name, as the conventions say.
    """

    scopes = (ScopeType.HTTP,)

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            route = scope["path_template"]
            span.update_name(f"{scope['method']} {route}")  # type: ignore[typeddict-item]  # HTTP only
            span.set_attribute(HTTP_ROUTE, route)
        await next_app(scope, receive, send)
