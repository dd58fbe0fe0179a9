"""A worker's SIGTERM is left to the replica's main process: the same drain whoever receives the signal.

Kubernetes and ``docker stop`` send SIGTERM to the main process only; systemd's default
(``KillMode=control-group``), ``tini -g`` and supervisors that stop a whole group send it to every
process of the replica at once. Granian's workers stop listening as soon as they get it, while
the main process starts its grace period (readiness 503, still serving, ``graceful_server``): the
load balancer's requests then found the port closed (measured: 410 failed of ~54,000 requests,
HAProxy's 503s, when every process got SIGTERM; 0 when only the main process did).

So a worker under ``serve`` takes SIGTERM over from Granian: it stops (as Granian would on
SIGINT, gracefully) only once the main process has decided that the workers stop (the leaving
flag says ``stopping``, written right before it signals them); otherwise it goes on serving, and
the main process, which got the same SIGTERM, stops it after the grace period. A SIGTERM sent to
a worker alone (nobody stops the replica) still ends it, after the grace period and the workers'
kill timeout. SIGINT (Ctrl-C) stops at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from orders_service.config import Settings
from orders_service.lifecycle.leaving import is_stopping, leaving_flag

logger = logging.getLogger("orders_service")


class WorkerSignals:
    """Installed in a worker's event loop at start (``serve`` only: where there is a main process to decide)."""

    def __init__(self, settings: Settings) -> None:
        self._fallback = settings.shutdown_grace_seconds + settings.worker_kill_timeout
        self._pending: asyncio.TimerHandle | None = None

    def install(self) -> None:
        if leaving_flag() is None:  # not under serve: Granian's own handling (e.g. the tests' in-process app)
            return
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self) -> None:
        if is_stopping():
            self._stop()
            return
        if self._pending is None:
            logger.info(
                "SIGTERM in worker %d: serving on; the main process stops the workers after SHUTDOWN_GRACE_SECONDS",
                os.getpid(),
            )
            self._pending = asyncio.get_running_loop().call_later(self._fallback, self._stop)

    @staticmethod
    def _stop() -> None:
        """Granian's worker stops gracefully on SIGINT (its handler is still installed for it)."""
        os.kill(os.getpid(), signal.SIGINT)
