"""Prometheus metrics: HTTP metrics with the contract's exact names and labels, and order counters.

In multi-worker deployments ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module
is imported (``orders-service serve`` does it); ``/metrics`` then aggregates all workers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, get_args

from litestar.plugins.prometheus import PrometheusConfig, PrometheusController, PrometheusMiddleware
from prometheus_client import Counter, Histogram

from orders_service.errors import RejectionReason

if TYPE_CHECKING:
    from litestar.types import Message, Receive, Scope, Send

SERVICE = "orders"
METRICS_PATH = "/metrics"

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests handled.", ["service", "path", "method", "status"])
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds", "HTTP request duration in seconds.", ["service", "path", "method"]
)
ORDERS_CREATED = Counter("orders_created_total", "Orders placed.")
ORDERS_CANCELLED = Counter("orders_cancelled_total", "Orders cancelled (stock put back).")
ORDER_CREATE_FAILURES = Counter("order_create_failures_total", "Orders rejected, by reason.", ["reason"])
for _reason in get_args(RejectionReason):
    ORDER_CREATE_FAILURES.labels(reason=_reason)


class HTTPMetricsMiddleware(PrometheusMiddleware):
    """Litestar's Prometheus middleware with the labels this service's dashboards expect.

    The stock middleware shares one label set (``method, path, status_code, app_name``) between
    its counter and histogram; ours counts ``{service, path, method, status}`` and times
    ``{service, path, method}``, with ``path`` the route template (``/orders/{order_id}``).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_recording_status)
        finally:
            path = scope.get("path_template") or scope["path"]
            method: Any = scope.get("method", scope["type"])
            HTTP_REQUESTS.labels(SERVICE, path, method, str(status)).inc()
            HTTP_REQUEST_DURATION.labels(SERVICE, path, method).observe(time.perf_counter() - started)


UNROUTED_PATH = "<unrouted>"
_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


async def count_unrouted_response(message: Message, scope: Scope) -> None:
    """App-level ``before_send`` hook: count requests that matched no route (404, 405, bad Host).

    Route middleware never sees them; they share one ``path`` label so that scanners probing
    random URLs cannot multiply the series. Their duration is not observed.
    """
    if message["type"] == "http.response.start" and "route_handler" not in scope:
        method = scope.get("method", "")
        method = method if method in _KNOWN_METHODS else "OTHER"
        HTTP_REQUESTS.labels(SERVICE, UNROUTED_PATH, method, str(message["status"])).inc()


class MetricsController(PrometheusController):
    path = METRICS_PATH
    include_in_schema = False


def prometheus_config() -> PrometheusConfig:
    return PrometheusConfig(
        app_name=SERVICE,
        middleware_class=HTTPMetricsMiddleware,
        exclude=[f"^{METRICS_PATH}$"],
        scopes={"http"},  # type: ignore[arg-type]
    )
