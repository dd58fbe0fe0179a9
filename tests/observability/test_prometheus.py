"""A real Prometheus scrapes the 2-worker service: what its queries say matches the traffic sent."""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from orders_service.config import Settings
from tests.conftest import Catalog, unavailable
from tests.support.granian import GranianServer, start_granian
from tests.support.prometheus_server import JOB, Prometheus, prometheus_binary, running_prometheus
from tests.support.scrape import scrape

CANCEL = 'path="/orders/{order_id}/cancel",method="POST",status="200"'
LIVE = 'path="/health/live",method="GET"'


@pytest.fixture
def prometheus_and_service(settings: Settings, tmp_path: Path) -> Iterator[tuple[Prometheus, GranianServer]]:
    binary = prometheus_binary()
    if binary is None:
        unavailable("prometheus is not installed (Debian package prometheus)")
    assert binary is not None
    with start_granian(settings, workers=2, metrics_dir=tmp_path / "metrics") as server:
        target = urlsplit(server.base_url).netloc
        with running_prometheus(binary, target, tmp_path) as prometheus:
            prometheus.wait_for(f'up{{job="{JOB}"}}', 1)
            yield prometheus, server


def test_rate_sees_the_first_requests_of_a_series(
    prometheus_and_service: tuple[Prometheus, GranianServer], catalog: Catalog
) -> None:
    prometheus, server = prometheus_and_service
    catalog.add(1, stock=100)
    # The cancel series is scraped at 0 before its first request: rate() has a sample to start from.
    prometheus.wait_for(f"sum(http_requests_total{{{CANCEL}}})", 0)
    with httpx.Client(base_url=server.base_url, headers={"X-User": "scraped"}) as client:
        for _ in range(10):
            order = client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]})
            assert order.status_code == 200
            assert client.post(f"/orders/{order.json()['id']}/cancel").status_code == 200
    prometheus.wait_for(f"sum(http_requests_total{{{CANCEL}}})", 10)  # both workers' counts, summed
    increase = prometheus.value(f"sum(increase(http_requests_total{{{CANCEL}}}[1m]))")
    # increase() extrapolates towards the window's end by at most half a scrape interval.
    assert increase is not None
    assert 10 <= increase < 15
    assert prometheus.value(f"sum(rate(http_requests_total{{{CANCEL}}}[1m]))") > 0  # type: ignore[operator]
    assert prometheus.value("sum(orders_cancelled_total)") == 10


def test_histogram_quantile_agrees_with_the_latencies_clients_saw(
    prometheus_and_service: tuple[Prometheus, GranianServer],
) -> None:
    prometheus, server = prometheus_and_service
    before = sum(
        value
        for (name, labels), value in scrape(server).items()
        if name == "http_request_duration_seconds_count" and ("path", "/health/live") in labels
    )
    latencies = []
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(200):
            started = time.perf_counter()
            assert client.get("/health/live").status_code == 200
            latencies.append(time.perf_counter() - started)
    prometheus.wait_for(f"sum(http_request_duration_seconds_count{{{LIVE}}})", before + 200)
    bounds = sorted(
        float(series["metric"]["le"])
        for series in prometheus.query(f"http_request_duration_seconds_bucket{{{LIVE}}}")
        if series["metric"]["le"] != "+Inf"
    )
    assert bounds[0] < 0.001, "no sub-millisecond bucket"
    assert bounds[-1] > 30, "no bucket beyond the default statement timeout"
    p50 = prometheus.value(
        f"histogram_quantile(0.5, sum by (le) (increase(http_request_duration_seconds_bucket{{{LIVE}}}[1m])))"
    )
    # The service's time is part of what the client waited: its median lies at or below the
    # first bucket bound that holds the clients' median.
    client_median = statistics.median(latencies)
    bound = next(bound for bound in bounds if bound >= client_median)
    assert p50 is not None
    assert p50 <= bound, f"Prometheus p50 {p50 * 1000:.2f} ms, clients' median {client_median * 1000:.2f} ms"
