"""The backlog gauges across workers: the max of the live workers (not their sum), and a dead worker's forgotten.

The real ``serve`` with 2 workers, each running a relay whose broker is unreachable (the claim
still reads the backlog and sets the gauges every poll). A worker killed with SIGKILL is respawned
by Granian under a new pid: the gauge file of the dead one must stop counting, or the last backlog
it saw would be reported until the replica restarts (``OrdersEventsBacklog`` firing for nothing).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.events.test_backlog import write_backlog
from tests.support.faults import wait_until
from tests.support.granian import GranianServer, start_granian
from tests.support.scrape import scrape

PENDING = 300
UNREACHABLE_BROKER = "amqp://guest:guest@127.0.0.1:1/"  # nothing listens on port 1


def pending_gauge(server: GranianServer) -> float:
    return scrape(server)[("orders_events_pending", ())]


def workers(server: GranianServer) -> list[int]:
    return [child.pid for child in psutil.Process(server.process.pid).children()]


def gauge_files(metrics_dir: Path) -> set[int]:
    """The pids with a ``livemax`` gauge file (prometheus_client's multiprocess layout): workers that set one."""
    return {int(path.stem.rpartition("_")[2]) for path in metrics_dir.glob("gauge_livemax_*.db")}


async def test_the_backlog_is_reported_once_per_replica_and_forgotten_with_a_dead_worker(
    settings: Settings, catalog: Catalog, tmp_path: Path
) -> None:
    catalog.add(1, stock=10)
    write_backlog(catalog, PENDING)
    metrics_dir = tmp_path / "metrics"
    relaying = Settings.from_env(
        {
            **settings.as_env(),
            "AMQP_URL": UNREACHABLE_BROKER,
            "EVENTS_POLL_INTERVAL_MS": "100",
            "EVENTS_LISTEN": "false",
        }
    )
    with start_granian(relaying, workers=2, metrics_dir=metrics_dir) as server:
        first = workers(server)
        assert len(first) == 2
        # Both workers' relays have read the backlog: the max of the two, not their sum.
        await wait_until(lambda: gauge_files(metrics_dir) >= set(first), 30, "both workers set the gauge")
        await wait_until(lambda: pending_gauge(server) == PENDING, 30, "the backlog reported")
        assert pending_gauge(server) == PENDING

        os.kill(first[0], signal.SIGKILL)
        await wait_until(lambda: len(set(workers(server)) - set(first)) == 1, 30, "the worker respawned")
        with catalog.engine.begin() as connection:
            connection.exec_driver_sql(f"UPDATE {catalog.orders_schema}.outbox SET published_at = now()")
        await wait_until(lambda: pending_gauge(server) == 0, 30, "the drained backlog reported, the dead forgotten")
        assert first[0] not in gauge_files(metrics_dir)
