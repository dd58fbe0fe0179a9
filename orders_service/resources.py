"""What one worker shares between requests: engines, transaction runners, the product gate, the events relay."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from orders_service import metrics
from orders_service.config import Settings
from orders_service.database import readiness_engine, request_engine
from orders_service.product_gate import ProductGate
from orders_service.relay import RelayInServe
from orders_service.repositories import OrderRepository
from orders_service.services import OrderService
from orders_service.transactions import TransactionRunner


@dataclass(frozen=True, slots=True)
class Resources:
    settings: Settings
    runner: TransactionRunner
    readiness_runner: TransactionRunner
    gate: ProductGate
    orders: OrderService
    events: RelayInServe

    @classmethod
    def create(cls, settings: Settings) -> Resources:
        """Build everything; no connection is opened until the first request needs one."""
        runner = TransactionRunner(
            request_engine(settings),
            settings,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
            pool_name=metrics.REQUEST_POOL,
        )
        gate = ProductGate(settings.product_gate_limit, timeout=settings.db_lock_timeout_ms / 1000)
        # The request path runs its statements through the runner; the repository's session serves
        # only Advanced-Alchemy's own methods, and opens no connection unless one of them is called.
        repository = OrderRepository(
            session=AsyncSession(bind=runner.engine), runner=runner, outbox_channel=settings.outbox_channel
        )
        return cls(
            settings=settings,
            runner=runner,
            readiness_runner=TransactionRunner(
                readiness_engine(settings),
                settings,
                pool_size=1,
                pool_timeout=settings.health_timeout,
                budget=settings.health_timeout,
            ),
            gate=gate,
            orders=OrderService(repository, gate),
            events=RelayInServe(settings),
        )

    @property
    def engine(self) -> AsyncEngine:
        return self.runner.engine

    async def close(self) -> None:
        await self.events.stop()
        await self.runner.engine.dispose()
        await self.readiness_runner.engine.dispose()
