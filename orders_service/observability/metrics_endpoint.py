"""``GET /metrics``: the Prometheus exposition of every worker."""

from __future__ import annotations

from litestar.plugins.prometheus import PrometheusController

from orders_service.observability.http_metrics import EXCLUDE_FROM_METRICS

METRICS_PATH = "/metrics"


class MetricsController(PrometheusController):
    """``GET /metrics``: prometheus_client's exposition, aggregated over workers in multiprocess mode."""

    path = METRICS_PATH
    include_in_schema = False
    opt = {EXCLUDE_FROM_METRICS: True}
