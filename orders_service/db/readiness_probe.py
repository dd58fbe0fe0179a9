"""One readiness check in flight per worker, its outcome shared by every probe that comes meanwhile.

Each probe used to run a check of its own on readiness' single connection, so a burst of probes
queued for it: 1,000 probes, 100 at a time, took p99 3.3 s and up to 5 s with ``HEALTH_TIMEOUT=2``
in production, and 1,000 connections sending one probe each left some unanswered after 10 s. Shared
(``tests/db/test_readiness.py``, 2 workers, a busy 2-core machine): those 2,000 probes committed 21
transactions instead of 2,018, and the slowest took 0.09 s (100 at a time) and 0.56 s (1,000 at
once) instead of 0.64 s and 2.1 s.
"""

from __future__ import annotations

import asyncio
import math
from typing import TYPE_CHECKING

from orders_service.db.readiness import check_tables
from orders_service.db.transactions import StatementFailed
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics

if TYPE_CHECKING:
    from orders_service.db.transactions import TransactionRunner

# Probes arriving this soon after a check ended get its outcome: a burst of probes costs a worker
# one query per quarter second, while readiness still follows the database within a quarter
# second (the Gateway and Kubernetes probe every few seconds).
REUSE_SECONDS = 0.25


class ReadinessProbe:
    def __init__(self, runner: TransactionRunner, *, timeout: float) -> None:
        """``runner``'s budget bounds the check; ``timeout`` bounds each probe's wait for it."""
        self._runner = runner
        self._timeout = timeout
        self._check: asyncio.Task[DatabaseUnavailable | None] | None = None
        self._finished_at = -math.inf

    async def outcome(self) -> DatabaseUnavailable | None:
        """None when the database is ready, else why not; answered within ``timeout``."""
        loop = asyncio.get_running_loop()
        if self._check is None or (self._check.done() and loop.time() - self._finished_at >= REUSE_SECONDS):
            self._check = asyncio.create_task(self._run(), name="readiness-check")
        try:
            async with asyncio.timeout(self._timeout):
                # Shielded: a probe that gives up (or whose client left) does not cancel the others' check.
                return await asyncio.shield(self._check)
        except TimeoutError:
            return DatabaseUnavailable("database_timeout")

    async def _run(self) -> DatabaseUnavailable | None:
        try:
            metrics.DB_TIMELINE.set(await check_tables(self._runner))
        except DatabaseUnavailable as unavailable:
            return unavailable
        except StatementFailed as failed:  # e.g. a cached plan gone stale under a migration: not ready, and why
            return DatabaseUnavailable("database_unavailable", context=str(failed))
        finally:
            self._finished_at = asyncio.get_running_loop().time()
        return None
