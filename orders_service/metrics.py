"""Prometheus metrics: HTTP metrics with the contract's exact names and labels, and order counters.

In multi-worker deployments ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module
is imported (``orders-service serve`` does it); ``/metrics`` then aggregates all workers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, get_args

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import Counter, Histogram

from orders_service.errors import RejectionReason

if TYPE_CHECKING:
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

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
TRANSACTION_RETRIES = Counter(
    "db_transaction_retries_total", "Transactions run again after a deadlock or serialization failure.", ["cause"]
)
for _cause in ("deadlock", "serialization_failure"):
    TRANSACTION_RETRIES.labels(cause=_cause)


EXCLUDE_FROM_METRICS = "exclude_from_metrics"  # route opt key: /metrics itself is not counted


class _RouteMetrics:
    """The metric children of one route and method, resolved once instead of per request."""

    __slots__ = ("_by_status", "_method", "_path", "duration")

    def __init__(self, path: str, method: str) -> None:
        self._path = path
        self._method = method
        self._by_status: dict[int, Any] = {}
        self.duration = HTTP_REQUEST_DURATION.labels(SERVICE, path, method)

    def requests(self, status: int) -> Any:
        child = self._by_status.get(status)
        if child is None:
            child = self._by_status[status] = HTTP_REQUESTS.labels(SERVICE, self._path, self._method, str(status))
        return child


class HTTPMetricsMiddleware(ASGIMiddleware):
    """``http_requests_total{service,path,method,status}`` and ``http_request_duration_seconds{service,path,method}``.

    ``path`` is the route template (``/orders/{order_id}``); ``status`` is the status of the
    response start message as it is passed on to the server.
    """

    scopes = (ScopeType.HTTP,)
    exclude_opt_key = EXCLUDE_FROM_METRICS

    def __init__(self) -> None:
        self._routes: dict[tuple[str, str], _RouteMetrics] = {}

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        started = time.perf_counter()
        status = 500

        async def send_recording_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await next_app(scope, receive, send_recording_status)
        finally:
            key = (scope.get("path_template") or scope["path"], scope["method"])  # type: ignore[typeddict-item]  # HTTP only
            route = self._routes.get(key)
            if route is None:
                route = self._routes[key] = _RouteMetrics(*key)
            route.requests(status).inc()
            route.duration.observe(time.perf_counter() - started)


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
    """``GET /metrics``: prometheus_client's exposition, aggregated over workers in multiprocess mode."""

    path = METRICS_PATH
    include_in_schema = False
    opt = {EXCLUDE_FROM_METRICS: True}
