"""Whether this replica is leaving (``serve`` got SIGTERM and is in its grace period), and whether its main process
has decided that the workers stop now.

The main process (``graceful_server``) creates a flag file whose path it gives the workers in
``ORDERS_LEAVING_FLAG``: it exists once the replica is leaving (readiness reads it), and holds
``stopping`` once the grace period is over and the workers are told to stop (``worker_signals``).
A file, because Granian's workers are processes the service does not spawn itself: they share
nothing else with the main process but the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

LEAVING_FLAG_ENV = "ORDERS_LEAVING_FLAG"
STOPPING = "stopping"


def leaving_flag() -> Path | None:
    """The flag file of this replica; None outside ``serve``."""
    flag = os.environ.get(LEAVING_FLAG_ENV)
    return Path(flag) if flag else None


def is_leaving() -> bool:
    flag = leaving_flag()
    return flag is not None and flag.exists()


def is_stopping() -> bool:
    """The main process has told the workers to stop (its grace period is over, or it was interrupted)."""
    flag = leaving_flag()
    try:
        return flag is not None and flag.read_text() == STOPPING
    except FileNotFoundError:
        return False


def mark_leaving(flag: Path) -> None:
    flag.touch()


def mark_stopping(flag: Path) -> None:
    flag.write_text(STOPPING)
