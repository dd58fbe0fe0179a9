"""The composition root: builds what one worker shares between requests (engines, transaction runners, the product
queues, the order service, the events relay) and closes it on shutdown."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from orders_service.config import Settings
from orders_service.db.engine import readiness_engine, replica_engine, request_engine
from orders_service.db.readiness_probe import ReadinessProbe
from orders_service.db.transactions import TransactionRunner
from orders_service.events.relay_in_serve import RelayInServe
from orders_service.observability import metrics
from orders_service.orders.product_queues import ProductQueues
from orders_service.orders.read_routing import ReadRouter
from orders_service.orders.service import OrderService
from orders_service.orders.store import OrderStore


@dataclass(frozen=True, slots=True)
class WorkerComponents:
    settings: Settings
    runner: TransactionRunner
    reads: ReadRouter
    readiness_runner: TransactionRunner
    readiness: ReadinessProbe
    queues: ProductQueues
    orders: OrderService
    events: RelayInServe

    @classmethod
    def create(cls, settings: Settings) -> WorkerComponents:
        """Build everything; no connection is opened until the first request needs one."""
        runner = TransactionRunner(
            request_engine(settings),
            settings,
            pool_size=settings.db_pool_size,
            pool_timeout=settings.db_pool_timeout,
            pool_name=metrics.REQUEST_POOL,
        )
        replica = None
        if settings.db_read_hosts:
            replica = TransactionRunner(
                replica_engine(settings),
                settings,
                pool_size=settings.db_pool_size,
                pool_timeout=settings.db_pool_timeout,
                pool_name=metrics.REPLICA_POOL,
            )
        reads = ReadRouter(runner, replica, max_lag=settings.db_read_max_lag_ms / 1000)
        queues = ProductQueues(
            OrderStore(runner, reads),
            max_orders=settings.order_batch_max,
            lock_timeout=settings.db_lock_timeout_ms / 1000,
            per_product=settings.order_queue_per_product,
            per_worker=settings.order_queue_per_worker,
            wait_seconds=settings.order_batch_wait_ms / 1000,
        )
        events = RelayInServe(settings, runner)
        readiness_runner = TransactionRunner(
            readiness_engine(settings),
            settings,
            pool_size=1,
            pool_timeout=settings.health_timeout,
            budget=settings.health_timeout,
        )
        return cls(
            settings=settings,
            runner=runner,
            reads=reads,
            readiness_runner=readiness_runner,
            readiness=ReadinessProbe(readiness_runner, timeout=settings.health_timeout),
            queues=queues,
            orders=OrderService(queues, on_event_committed=events.event_committed),
            events=events,
        )

    @property
    def engine(self) -> AsyncEngine:
        return self.runner.engine

    async def close(self) -> None:
        await self.events.stop()
        await self.runner.engine.dispose()
        if self.reads.replica is not None:
            await self.reads.replica.engine.dispose()
        await self.readiness_runner.engine.dispose()
