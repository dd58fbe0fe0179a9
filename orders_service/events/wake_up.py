"""Waking the events relay after an order or a cancellation committed its event, outside that transaction.

A NOTIFY sent in the order's own transaction would make PostgreSQL serialise the commits of every
notifying transaction: it takes one database-wide lock at commit and holds it while the commit is
flushed (pgbench, 32 clients, 1 ms flushes: 631 tx/s with ``pg_notify`` against 15,520 without).
So the order's transaction sends none. After its commit:

- the relay of the same worker, if it publishes (holds the lease), is woken in-process;
- otherwise a NOTIFY of its own, in a transaction of its own, wakes the relay that publishes,
  wherever it runs: at most one every ``EVENTS_NOTIFY_INTERVAL_MS`` per worker, since one wake-up
  serves every event committed before it.

The relay also polls (``EVENTS_POLL_INTERVAL_MS``): a lost wake-up delays events, never loses them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sqlalchemy import String, bindparam, func, literal_column, select

from orders_service.config import Settings
from orders_service.db.statements import Statement, Step
from orders_service.db.transactions import StatementFailed, TransactionRunner
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.events.relay import Relay

logger = logging.getLogger(__name__)

NOTIFY = Statement("notify_outbox", select(func.pg_notify(bindparam("channel", type_=String), literal_column("''"))))


class RelayWakeUp:
    """``event_committed()`` after each commit that wrote an event; a task of the worker sends the NOTIFYs."""

    def __init__(self, settings: Settings, runner: TransactionRunner, local_relay: Relay | None) -> None:
        self._runner = runner
        self._local_relay = local_relay
        self._params = {"channel": settings.outbox_channel}
        self._interval = settings.events_notify_interval_ms / 1000
        self._pending: asyncio.Event | None = None  # made by start(): an Event belongs to one event loop
        self._task: asyncio.Task[None] | None = None

    def event_committed(self) -> None:
        """Called on the request path: costs an attribute check and an ``Event.set``."""
        relay = self._local_relay
        if relay is not None and relay.holds_lease:
            relay.wake()
        elif self._pending is not None:
            self._pending.set()

    async def start(self) -> None:
        if self._task is None:
            self._pending = asyncio.Event()
            self._task = asyncio.create_task(self._notify_while_pending(self._pending), name="outbox-wake-up")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = self._pending = None

    async def _notify_while_pending(self, pending: asyncio.Event) -> None:
        while True:
            await pending.wait()
            pending.clear()
            try:
                await self._runner.run([Step(NOTIFY, self._params)], writes=False)
            except (DatabaseUnavailable, StatementFailed) as exc:  # the relay's poll publishes the events anyway
                logger.debug("could not wake the events relay: %s", exc)
            except Exception:  # a bug must not end the wake-ups for the worker's life: the poll covers meanwhile
                logger.exception("waking the events relay failed")
            await asyncio.sleep(self._interval)  # the events committed meanwhile go with the next NOTIFY
