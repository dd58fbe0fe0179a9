"""How many client connections a worker keeps open, idle keep-alive ones included, and for how long they may idle.

Granian caps each worker's open connections (its ``backpressure``), counting idle keep-alive
ones, and by default at ``backlog // workers``: the cap shrinks as workers are added. Each
worker has its own ``SO_REUSEPORT`` listener and the kernel hashes connections to workers, not
by load: past the cap on one worker, new connections wait in its accept queue (the TCP connect
succeeds, the first byte never comes) while another worker has room. With 2 workers, 1,000 idle
keep-alive connections of a load balancer's pool left some ``/health`` probes unanswered for 10 s
and more.

So the cap is per worker and does not depend on ``WORKERS``: ``HTTP_MAX_CONNECTIONS``, or (0, the
default) as many as the open-files limit leaves once the worker's other descriptors are counted,
up to ``AUTO_MAX``. ``serve`` first raises the soft open-files limit to the hard one. An idle
keep-alive connection is closed after ``HTTP_IDLE_TIMEOUT`` (Granian's header-read timeout:
it also bounds how long the start of a request may take to arrive).
"""

from __future__ import annotations

import resource

from orders_service.config import ConfigError, Settings

AUTO_MAX = 16_384
# A worker's descriptors besides client connections: its pools (requests, readiness, relay), LISTEN,
# the broker, the metrics files, logs, Python's own; generously.
OTHER_DESCRIPTORS = 128


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (the workers inherit it); the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1_048_576)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # pragma: no cover - a platform that refuses: keep the soft limit
            pass
    return soft


def connections_per_worker(settings: Settings, open_files: int) -> int:
    """The cap on a worker's open client connections; ConfigError when ``HTTP_MAX_CONNECTIONS`` needs more
    descriptors than ``open_files`` allows."""
    room = open_files - OTHER_DESCRIPTORS - settings.db_pool_size
    if settings.http_max_connections == 0:
        return max(1, min(AUTO_MAX, room))
    if settings.http_max_connections > room:
        raise ConfigError(
            f"invalid configuration: HTTP_MAX_CONNECTIONS {settings.http_max_connections} needs an open-files limit "
            f"of at least {settings.http_max_connections + OTHER_DESCRIPTORS + settings.db_pool_size} "
            f"(ulimit -n); it is {open_files}"
        )
    return settings.http_max_connections
