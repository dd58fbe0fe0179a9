"""Flash sales: the concurrent orders of one product, placed in one transaction.

Every order of a product decrements the same row, and PostgreSQL serialises them on its lock:
each holds it until its commit is flushed. With ~1 ms flushes (cloud block storage) one order per
transaction caps a product at about 600 orders/s, whatever the hardware; ten orders in one
transaction reach about 5,800/s on the same row (pgbench, this machine).

So, per worker and per product (an order's product is the one it waits for: ``ProductGate.busiest``):
an order that finds no transaction of its product running is placed at once, alone (a lone order
never waits for company). Orders that arrive while one runs queue here, in arrival order; when it
ends, the next transaction takes them all, up to ``ORDER_BATCH_MAX`` (``PLACE_ORDERS``: each
order decided in arrival order against the stock the ones before it left, each all or nothing).

Orders in general, where it pays: an order whose product is idle but that finds every pooled
connection in use would wait for one anyway; it waits in a queue of its own instead, and the
next transaction to get a connection takes every order waiting there, whatever their products.
Such a transaction waits for no row (``wait_for`` empty: a product held elsewhere is skipped,
and its order tries again alone, as a busy product's order does). So under load the commits,
not the orders, queue for the database: fewer commits, each flushing several orders.

- An order waits in a product's queue at most the gate's timeout (``DB_LOCK_TIMEOUT_MS``; then 503
  ``product_busy``), in the queue of any product at most ``DB_POOL_TIMEOUT`` (then 503
  ``pool_exhausted``, as it would have waited for a connection), never past its deadline, and nothing
  is written; once taken, it has the batch's answer, which ends by the earliest deadline of the batch.
- Two orders with one Idempotency-Key are never in one batch: the later waits for the next, and then
  replays the earlier one's order (or is placed, if the earlier was rejected), as one after the other.
- A batch that fails with a statement error (not a fault: a constraint, a value out of range)
  is placed again order by order, so that one bad order fails alone.
- A fault (connection lost, timeouts) answers every order of the batch as it would answer one:
  503, with "outcome unknown" when the commit may have happened.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from orders_service.db.transactions import StatementFailed
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics
from orders_service.orders.product_gate import ProductGate
from orders_service.orders.store import OrderRequest, OrderStore, PlacementOutcome

ANY_PRODUCT = 0  # the queue of orders waiting for a connection (no product has id 0: ids are positive)


@dataclass(slots=True, eq=False)
class _Waiter:
    request: OrderRequest
    deadline: float
    outcome: asyncio.Future[PlacementOutcome]


@dataclass(slots=True)
class _Queue:
    pending: deque[_Waiter] = field(default_factory=deque)
    running: bool = False


class OrderCombiner:
    """Places orders, combining those that arrive while their product's transaction runs."""

    def __init__(self, store: OrderStore, gate: ProductGate, *, max_orders: int, wait_seconds: float = 0.0) -> None:
        """``max_orders``: at most this many orders per transaction (1: never combine); ``wait_seconds``: how long
        a batch formed under load waits for more orders before it starts (0: it starts at once)."""
        self.store = store
        self.gate = gate
        self.max_orders = max_orders
        self.wait_seconds = wait_seconds
        self._queues: dict[int, _Queue] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def busiest(self, product_ids: Iterable[int]) -> int:
        """The product of ``product_ids`` most of this worker's orders are placing or waiting for (``ProductGate``)."""
        return min(product_ids, key=lambda product_id: (-self._users(product_id), product_id))

    def queued(self, product_id: int) -> int:
        """How many orders of ``product_id`` wait here for the next transaction."""
        queue = self._queues.get(product_id)
        return len(queue.pending) if queue is not None else 0

    def _users(self, product_id: int) -> int:
        queue = self._queues.get(product_id)
        queued = len(queue.pending) + queue.running if queue is not None else 0
        return queued + self.gate.users(product_id)

    async def place(
        self, product_id: int, request: OrderRequest, deadline: float
    ) -> tuple[PlacementOutcome, list[int]]:
        """Place ``request``, waiting for ``product_id``'s row at most (the others are skipped when busy).

        Returns the outcome and the rows its transaction waited for (``[product_id]``, or none when it
        was placed with orders of other products).
        """
        queue = self._queues.get(product_id)
        if queue is None:
            if self.max_orders > 1 and self.store.runner.saturated:
                return await self._queued(ANY_PRODUCT, request, deadline), []
            queue = self._queues[product_id] = _Queue(running=True)
            try:
                async with self.gate.admit(product_id, deadline):
                    outcome = await self._place_alone(request, [product_id], deadline)
            finally:
                metrics.ORDERS_PER_TRANSACTION.observe(1)
                self._next(product_id, queue)
            return outcome, [product_id]
        return await self._queued(product_id, request, deadline), [product_id]

    async def _queued(self, key: int, request: OrderRequest, deadline: float) -> PlacementOutcome:
        """Wait in ``key``'s queue for a transaction to take the order, and return its outcome."""
        queue = self._queues.get(key)
        if queue is None:  # the queue of any product: its first order starts a transaction at once
            queue = self._queues[key] = _Queue(running=True)
            self._next(key, queue, started=True)
        waiter = _Waiter(request, deadline, asyncio.get_running_loop().create_future())
        queue.pending.append(waiter)
        gauge = _waiting_gauge(key)
        gauge.inc()
        try:
            await self._taken(waiter, queue, key)
            return await waiter.outcome
        except BaseException:
            if waiter in queue.pending:
                queue.pending.remove(waiter)
                gauge.dec()
                self._forget_if_idle(key, queue)
            waiter.outcome.cancel()  # taken: its batch goes on, and leaves a cancelled order's answer unread
            raise

    async def _taken(self, waiter: _Waiter, queue: _Queue, key: int) -> None:
        """Wait until a batch takes ``waiter`` (or answers it); 503 past the gate's timeout (``product_busy``) or,
        in the queue of any product, the pool's (``pool_exhausted``)."""
        timeout = self.store.runner.pool_timeout if key == ANY_PRODUCT else self.gate.timeout
        limit = min(waiter.deadline, asyncio.get_running_loop().time() + timeout)
        await asyncio.wait([waiter.outcome], timeout=max(0.0, limit - asyncio.get_running_loop().time()))
        if not waiter.outcome.done() and waiter in queue.pending:
            if key == ANY_PRODUCT:
                raise DatabaseUnavailable("pool_exhausted")
            raise DatabaseUnavailable("product_busy", context=f"product {key}")

    def _next(self, product_id: int, queue: _Queue, *, started: bool = False) -> None:
        """After a transaction of ``product_id``: start the next one for the orders that queued meanwhile
        (``started``: the queue's first order is about to join, start it anyway)."""
        if not queue.pending and not started:
            queue.running = False
            self._forget_if_idle(product_id, queue)
            return
        task = asyncio.get_running_loop().create_task(self._run_next(product_id, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _forget_if_idle(self, product_id: int, queue: _Queue) -> None:
        if not queue.running and not queue.pending and self._queues.get(product_id) is queue:
            del self._queues[product_id]

    async def _run_next(self, product_id: int, queue: _Queue) -> None:
        try:
            if self.wait_seconds > 0 and 0 < len(queue.pending) < self.max_orders:
                earliest = min(waiter.deadline for waiter in queue.pending)
                pause = min(self.wait_seconds, earliest - asyncio.get_running_loop().time())
                if pause > 0:
                    await asyncio.sleep(pause)  # let more orders join this transaction
            batch = self._take(product_id, queue)
            if batch:
                await self._run_batch(product_id, batch)
        finally:
            self._next(product_id, queue)

    def _take(self, key: int, queue: _Queue) -> list[_Waiter]:
        """Up to ``max_orders`` queued orders in arrival order, no two with one Idempotency-Key (a later twin
        stays queued, in its place, for the next transaction)."""
        batch: list[_Waiter] = []
        idempotency_keys: set[tuple[str, str]] = set()
        later: list[_Waiter] = []
        while queue.pending and len(batch) < self.max_orders:
            waiter = queue.pending.popleft()
            if waiter.outcome.done():  # pragma: no cover - answered while queued (cancelled)
                continue
            idempotency_key = waiter.request.idempotency_key
            if idempotency_key is not None:
                if (waiter.request.user_id, idempotency_key) in idempotency_keys:
                    later.append(waiter)
                    continue
                idempotency_keys.add((waiter.request.user_id, idempotency_key))
            batch.append(waiter)
        queue.pending.extendleft(reversed(later))
        _waiting_gauge(key).dec(len(batch))
        return batch

    def _admit(self, key: int, deadline: float) -> AbstractAsyncContextManager[None]:
        """A product's transactions go through its gate; those of any product wait for no row, so need none."""
        return self.gate.admit(key, deadline) if key != ANY_PRODUCT else nullcontext()

    async def _place_alone(self, request: OrderRequest, wait_for: list[int], deadline: float) -> PlacementOutcome:
        return await self.store.place_order(
            request.user_id,
            request.wanted,
            request.idempotency_key,
            request.request_hash,
            wait_for=wait_for,
            deadline=deadline,
        )

    async def _run_batch(self, key: int, batch: list[_Waiter]) -> None:
        deadline = min(waiter.deadline for waiter in batch)
        requests = [waiter.request for waiter in batch]
        wait_for = _waits_for(key)
        metrics.ORDERS_PER_TRANSACTION.observe(len(batch))
        try:
            async with self._admit(key, deadline):
                if len(batch) == 1:
                    (request,) = requests
                    outcomes = [await self._place_alone(request, wait_for, deadline)]
                else:
                    outcomes = await self.store.place_orders(requests, wait_for=wait_for, deadline=deadline)
        except StatementFailed as failed:
            if len(batch) == 1:
                _fail(batch, failed)
            else:
                await self._one_by_one(key, batch)
            return
        except BaseException as failure:
            _fail(batch, failure)
            if not isinstance(failure, Exception):
                raise
            return
        for waiter, outcome in zip(batch, outcomes, strict=True):
            if not waiter.outcome.done():
                waiter.outcome.set_result(outcome)

    async def _one_by_one(self, key: int, batch: list[_Waiter]) -> None:
        """A batch failed with a statement error: each order alone, so that only the bad one fails."""
        wait_for = _waits_for(key)
        for waiter in batch:
            request = waiter.request
            try:
                async with self._admit(key, waiter.deadline):
                    outcome = await self._place_alone(request, wait_for, waiter.deadline)
            except Exception as failure:  # noqa: BLE001 - the order's own answer
                _fail([waiter], failure)
                continue
            metrics.ORDERS_PER_TRANSACTION.observe(1)
            if not waiter.outcome.done():
                waiter.outcome.set_result(outcome)


def _fail(batch: list[_Waiter], failure: BaseException) -> None:
    for waiter in batch:
        if not waiter.outcome.done():
            if isinstance(failure, asyncio.CancelledError):
                waiter.outcome.cancel()
            else:
                waiter.outcome.set_exception(failure)


def _waits_for(key: int) -> list[int]:
    """The rows a transaction of ``key``'s queue waits for: its product's, or none in the queue of any product."""
    return [key] if key != ANY_PRODUCT else []


def _waiting_gauge(key: int) -> Any:
    """Orders queued for a product's next transaction wait at its gate; the others wait for a connection."""
    return metrics.POOL_WAITING.labels(pool=metrics.REQUEST_POOL) if key == ANY_PRODUCT else metrics.GATE_WAITING
