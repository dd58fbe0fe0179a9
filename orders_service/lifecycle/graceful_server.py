"""Granian's server with a grace period on SIGTERM, for rolling deploys behind a load balancer.

On SIGTERM the replica first says it is leaving (readiness answers 503, liveness stays 200) and
keeps serving for ``SHUTDOWN_GRACE_SECONDS``, the time the load balancer needs to see it and
stop sending it requests; only then does Granian's own graceful shutdown start (the listener
closes, in-flight requests finish within ``WORKER_KILL_TIMEOUT``). Without the grace, the
listener closed at once while the load balancer still sent requests: connection refused.
SIGINT (Ctrl-C) and a second SIGTERM stop at once. Whether the workers got the SIGTERM too
(systemd's ``KillMode=control-group``) or not, they stop only when this process says so
(``worker_signals``): it marks the flag ``stopping`` right before Granian signals them.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Any

from granian.server import Server

from orders_service.lifecycle.leaving import mark_leaving, mark_stopping

logger = logging.getLogger("orders_service")


class GracefulServer(Server):  # type: ignore[misc,valid-type]
    """``granian.server.Server`` whose SIGTERM handler waits ``grace`` seconds, flagging the replica as leaving."""

    def __init__(self, *args: Any, grace: float, leaving_flag: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._grace = grace
        self._leaving_flag = leaving_flag
        self._leaving = False

    # Granian installs this (a public method) as its SIGINT/SIGTERM handler in the main process.
    def signal_handler_interrupt(self, *args: Any, **kwargs: Any) -> None:
        signum = args[0] if args else None
        if signum != signal.SIGTERM or self._grace <= 0 or self._leaving:
            self._stop_now(*args, **kwargs)
            return
        self._leaving = True
        mark_leaving(self._leaving_flag)
        logger.info(
            "SIGTERM: readiness answers 503 and requests are still served for %s s (SHUTDOWN_GRACE_SECONDS), "
            "then in-flight requests finish and the workers stop",
            f"{self._grace:g}",
        )
        timer = threading.Timer(self._grace, self._stop_now)
        timer.daemon = True
        timer.start()

    def _stop_now(self, *args: Any, **kwargs: Any) -> None:
        """Granian's shutdown: the workers, told ``stopping`` first, stop on the SIGTERM it sends them."""
        mark_stopping(self._leaving_flag)
        super().signal_handler_interrupt(*args, **kwargs)
