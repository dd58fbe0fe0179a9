"""Read the service's /metrics as a test would query Prometheus."""

from __future__ import annotations

from collections import Counter

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.granian import GranianServer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(server: GranianServer) -> Samples:
    """Parse /metrics into {(sample name, sorted labels): value}."""
    response = httpx.get(f"{server.base_url}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def requests_total(metrics: Samples, path: str, method: str, status: str) -> float:
    labels = (("method", method), ("path", path), ("service", "orders"), ("status", status))
    return metrics.get(("http_requests_total", labels), 0.0)


def requests_by_status(metrics: Samples) -> Counter[int]:
    """http_requests_total summed over paths and methods, per status."""
    totals: Counter[int] = Counter()
    for (name, labels), value in metrics.items():
        if name == "http_requests_total":
            totals[int(dict(labels)["status"])] += int(value)
    return totals


def unavailable_by_cause(metrics: Samples) -> Counter[str]:
    """service_unavailable_responses_total per cause."""
    return Counter(
        {
            dict(labels)["cause"]: int(value)
            for (name, labels), value in metrics.items()
            if name == "service_unavailable_responses_total"
        }
    )


def publish_failures(metrics: Samples, reason: str | None = None) -> float:
    """orders_events_publish_failures_total, for one reason or summed over all."""
    return sum(
        value
        for (name, labels), value in metrics.items()
        if name == "orders_events_publish_failures_total" and (reason is None or dict(labels)["reason"] == reason)
    )
