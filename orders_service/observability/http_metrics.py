"""The HTTP metrics of every request: the middleware on routed requests, a hook for unrouted ones, the zero series.

Every series a route can produce in normal operation exists at 0 from the start
(``create_route_series``): ``rate()`` needs a sample before the first increment to see it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.routes import HTTPRoute

from orders_service.observability.metrics import HTTP_REQUEST_DURATION, HTTP_REQUESTS, SERVICE

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.types import ASGIApp, Message, Receive, Scope, Send

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
    """App-level ``before_send`` hook: count requests that matched no route (404, 405).

    Route middleware never sees them; they share one ``path`` label so that scanners probing
    random URLs cannot multiply the series. Their duration is not observed.
    """
    if message["type"] == "http.response.start" and "route_handler" not in scope:
        count_unrouted(scope.get("method", ""), message["status"])


def count_unrouted(method: str, status: int) -> None:
    """Count a request answered without a route, under one ``path`` label and its method (``OTHER`` if unknown)."""
    HTTP_REQUESTS.labels(SERVICE, UNROUTED_PATH, method if method in _KNOWN_METHODS else "OTHER", str(status)).inc()
