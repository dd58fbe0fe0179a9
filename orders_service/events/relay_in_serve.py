"""The events relay inside ``serve``: one per Granian worker, started and stopped with the app."""

from __future__ import annotations

import asyncio
import logging

from orders_service.config import Settings
from orders_service.events.relay import Relay

logger = logging.getLogger(__name__)

DISABLED = "disabled: AMQP_URL not set"
EXTERNAL = "published by a separate relay (EVENTS_RELAY_IN_SERVE=false)"


class RelayInServe:
    """The relay of one Granian worker: started with the app when ``AMQP_URL`` is set, stopped with it.

    Every worker of every replica runs one; the lease lets one of them publish at a time.
    """

    STOP_TIMEOUT = 10.0

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        enabled = bool(settings.amqp_url) and settings.events_relay_in_serve
        self.relay = Relay(settings) if enabled else None
        self._task: asyncio.Task[None] | None = None

    @property
    def state(self) -> str:
        """What ``/health`` says about events."""
        if not self.settings.amqp_url:
            return DISABLED
        if self.relay is None:
            return EXTERNAL
        return self.relay.state

    async def start(self) -> None:
        if self.relay is not None and self._task is None:
            self._task = asyncio.create_task(self.relay.run(), name="outbox-relay")

    async def stop(self) -> None:
        if self.relay is None or self._task is None:
            return
        self.relay.stop()
        try:
            await asyncio.wait_for(self._task, self.STOP_TIMEOUT)
        except TimeoutError:
            logger.warning("events relay did not stop within %.0f s", self.STOP_TIMEOUT)
        self._task = None
