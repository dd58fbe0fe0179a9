"""Whether this replica is leaving: ``serve`` got SIGTERM and is in its grace period.

The main process (``graceful_server``) creates a flag file whose path it gives the workers in
``ORDERS_LEAVING_FLAG``; readiness reads it. A file, because Granian's workers are processes the
service does not spawn itself: they share nothing else with the main process but the environment.
"""

from __future__ import annotations

import os

LEAVING_FLAG_ENV = "ORDERS_LEAVING_FLAG"


def is_leaving() -> bool:
    flag = os.environ.get(LEAVING_FLAG_ENV)
    return flag is not None and os.path.exists(flag)
