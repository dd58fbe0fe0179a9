"""The events relay inside ``serve``: one per Granian worker, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging

from orders_service.config import Settings
from orders_service.db.transactions import TransactionRunner
from orders_service.events.relay import Relay
from orders_service.events.wake_up import RelayWakeUp

logger = logging.getLogger(__name__)

DISABLED = "disabled: AMQP_URL not set"
EXTERNAL = "published by a separate relay (EVENTS_RELAY_IN_SERVE=false)"


class RelayInServe:
    """The relay of one Granian worker: started with the app when ``AMQP_URL`` is set, stopped with it.

    Every worker of every replica runs one; the lease lets one of them publish at a time.
    """

    STOP_TIMEOUT = 10.0

    def __init__(self, settings: Settings, runner: TransactionRunner) -> None:
        """``runner``: the request path's, which sends the NOTIFYs that wake the relay wherever it runs."""
        self.settings = settings
        enabled = bool(settings.amqp_url) and settings.events_relay_in_serve
        self.relay = Relay(settings) if enabled else None
        # Someone listens: this worker's relay (AMQP_URL set), or one run apart (EVENTS_RELAY_IN_SERVE=false).
        listened_for = settings.events_listen and (bool(settings.amqp_url) or not settings.events_relay_in_serve)
        self.wake_up = RelayWakeUp(settings, runner, self.relay) if listened_for else None
        self._task: asyncio.Task[None] | None = None

    def event_committed(self) -> None:
        """An order or a cancellation committed its event: wake the relay that publishes."""
        if self.wake_up is not None:
            self.wake_up.event_committed()

    @property
    def state(self) -> str:
        """What ``/health`` says about events."""
        if not self.settings.amqp_url:
            return DISABLED
        if self.relay is None:
            return EXTERNAL
        return self.relay.state

    async def start(self) -> None:
        if self.wake_up is not None:
            await self.wake_up.start()
        if self.relay is not None and self._task is None:
            self._task = asyncio.create_task(self.relay.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self.wake_up is not None:
            await self.wake_up.stop()
        if self.relay is None or self._task is None:
            return
        self.relay.stop()
        try:
            await asyncio.wait_for(self._task, self.STOP_TIMEOUT)
        except TimeoutError:
            logger.warning("events relay did not stop within %.0f s", self.STOP_TIMEOUT)
        self._task = None
