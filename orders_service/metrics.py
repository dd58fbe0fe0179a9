"""Prometheus metrics: HTTP metrics with the contract's exact names and labels, order counters, saturation.

In multi-worker deployments ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module
is imported (``orders-service serve`` does it); ``/metrics`` then aggregates all workers
(counters and histograms summed, gauges summed over the live workers).

Every series a route can produce in normal operation exists at 0 from the start
(``create_route_series``): ``rate()`` needs a sample before the first increment to see it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, get_args

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.plugins.prometheus import PrometheusController
from litestar.routes import HTTPRoute
from prometheus_client import Counter, Gauge, Histogram

from orders_service.causes import RejectionReason, UnavailableCause

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

SERVICE = "orders"
METRICS_PATH = "/metrics"

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests handled.", ["service", "path", "method", "status"])
# From a liveness probe (~0.3 ms) to past the statement timeout (30 s by default).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration in seconds.",
    ["service", "path", "method"],
    buckets=DURATION_BUCKETS,
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
SERVICE_UNAVAILABLE = Counter(
    "service_unavailable_responses_total", "503 answers of the API (readiness excluded), by cause.", ["cause"]
)
SERVICE_UNAVAILABLE_BY_CAUSE = {cause: SERVICE_UNAVAILABLE.labels(cause=cause) for cause in get_args(UnavailableCause)}

REQUEST_POOL = "requests"
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use", "Pooled connections running a transaction.", ["pool"], multiprocess_mode="livesum"
)
POOL_MAX = Gauge("db_pool_connections_max", "Size of the connection pool.", ["pool"], multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "db_pool_requests_waiting", "Requests waiting for a pooled connection.", ["pool"], multiprocess_mode="livesum"
)
GATE_WAITING = Gauge(
    "product_gate_requests_waiting",
    "Orders waiting at the per-product gate (their product is already taken by PRODUCT_GATE_LIMIT requests).",
    multiprocess_mode="livesum",
)

# Events (the outbox relay). Every relay of every worker reads the backlog; the max of the live ones is the truth.
EVENTS_PENDING = Gauge("orders_events_pending", "Events in the outbox not yet published.", multiprocess_mode="livemax")
EVENTS_OLDEST_PENDING_AGE = Gauge(
    "orders_events_oldest_pending_age_seconds",
    "Age of the oldest event not yet published (0 when none is pending).",
    multiprocess_mode="livemax",
)
EVENTS_PUBLISHED = Counter("orders_events_published_total", "Events published and confirmed by the broker.", ["type"])
for _type in ("orders.order.placed", "orders.order.cancelled"):
    EVENTS_PUBLISHED.labels(type=_type)
EVENTS_PUBLISH_FAILURES = Counter(
    "orders_events_publish_failures_total",
    "Failed attempts to reach the broker or to have a batch of events confirmed (each followed by a back-off).",
)


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


def create_route_series(app: Litestar) -> None:
    """Startup hook: ``http_requests_total`` at 0 for every route, method and status it documents, and the durations."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            # Litestar's implicit OPTIONS handler is not part of the API: its series appear when used.
            if handler.opt.get(EXCLUDE_FROM_METRICS) or handler.http_methods == {"OPTIONS"}:
                continue
            statuses = {handler.status_code, *(handler.responses or {})}
            for method in handler.http_methods:
                HTTP_REQUEST_DURATION.labels(SERVICE, route.path_format, method)
                for status in statuses:
                    HTTP_REQUESTS.labels(SERVICE, route.path_format, method, str(status))


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
