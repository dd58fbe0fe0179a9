"""``GET /metrics``: the Prometheus exposition of every worker."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from litestar import Request
from litestar.plugins.prometheus import PrometheusController
from prometheus_client import multiprocess

from orders_service.observability.http_metrics import EXCLUDE_FROM_METRICS

METRICS_PATH = "/metrics"
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"


def forget_dead_workers(directory: Path) -> list[int]:
    """Drop the live gauges (``livesum``, ``livemax``) of workers that are gone; the pids dropped.

    prometheus_client keeps a worker's gauge file until ``mark_process_dead`` is called for its
    pid, and Granian, which respawns a worker that died, never calls it: a dead worker's last
    backlog (``orders_events_pending``, ``livemax``) or pool use (``livesum``) would be reported
    until the replica restarts (measured: 300 pending for ever after the backlog drained).
    Counters and histograms of a dead worker stay, as they should: they only add up.
    """
    dead = []
    for path in directory.glob("gauge_live*_*.db"):
        pid = int(path.stem.rpartition("_")[2])
        if not _alive(pid):
            multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]
            dead.append(pid)
    return dead


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - another user's process holds the pid
        return True
    return True


async def _before_scrape(_: Request[Any, Any, Any]) -> None:
    directory = os.environ.get(MULTIPROC_DIR_ENV)
    if directory:
        with contextlib.suppress(OSError):  # a file another scrape removed meanwhile
            forget_dead_workers(Path(directory))


class MetricsController(PrometheusController):
    """``GET /metrics``: prometheus_client's exposition, aggregated over workers in multiprocess mode."""

    path = METRICS_PATH
    include_in_schema = False
    opt = {EXCLUDE_FROM_METRICS: True}
    before_request = staticmethod(_before_scrape)
