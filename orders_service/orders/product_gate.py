"""The bulkhead: per worker, only a few requests per product may use a database connection at once.

Orders for one product serialize on its row lock in PostgreSQL. Without a gate, a product
whose row is held elsewhere (a slow catalog job, a hot product) parks every pooled
connection on that row, and orders for every *other* product wait for a connection. With the
gate, at most ``limit`` requests per product hold or wait for a connection; the others wait
here, in the worker, holding nothing. This is also where orders of a hot product could later
be combined into one transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from types import TracebackType

from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics


class _Slot:
    __slots__ = ("semaphore", "users")

    def __init__(self, limit: int) -> None:
        self.semaphore = asyncio.Semaphore(limit)
        self.users = 0


class ProductGate:
    """Admission per product id; ``admit(ids)`` waits at most ``timeout`` seconds, then answers 503."""

    def __init__(self, limit: int, timeout: float) -> None:
        self.limit = limit
        self.timeout = timeout
        self.waiting = 0
        self._slots: dict[int, _Slot] = {}

    def admit(self, product_ids: Sequence[int], deadline: float) -> _Admission:
        """Enter for ``product_ids`` (ascending, distinct: every request takes them in the same order).

        Waits at most ``timeout`` (like a row lock under lock_timeout), and never past ``deadline``
        (event-loop time), the request's whole budget.
        """
        return _Admission(self, product_ids, deadline)

    def _slot(self, product_id: int) -> _Slot:
        slot = self._slots.get(product_id)
        if slot is None:
            slot = self._slots[product_id] = _Slot(self.limit)
        slot.users += 1
        return slot

    def _leave(self, product_id: int, slot: _Slot, *, held: bool) -> None:
        if held:
            slot.semaphore.release()
        slot.users -= 1
        if slot.users == 0:
            del self._slots[product_id]


class _Admission:
    __slots__ = ("_deadline", "_gate", "_held", "_product_ids")

    def __init__(self, gate: ProductGate, product_ids: Sequence[int], deadline: float) -> None:
        self._gate = gate
        self._product_ids = product_ids
        self._deadline = deadline
        self._held: list[tuple[int, _Slot]] = []

    async def __aenter__(self) -> None:
        gate = self._gate
        loop = asyncio.get_running_loop()
        deadline = min(loop.time() + gate.timeout, self._deadline)
        try:
            for product_id in self._product_ids:
                slot = gate._slot(product_id)
                if not slot.semaphore.locked():
                    await slot.semaphore.acquire()  # free: returns at once
                else:
                    await self._wait(slot, deadline - loop.time(), product_id)
                self._held.append((product_id, slot))
        except BaseException:
            self._release()
            raise

    async def _wait(self, slot: _Slot, remaining: float, product_id: int) -> None:
        gate = self._gate
        gate.waiting += 1
        metrics.GATE_WAITING.inc()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                await slot.semaphore.acquire()
        except TimeoutError:
            gate._leave(product_id, slot, held=False)
            raise DatabaseUnavailable("product_busy", context=f"product {product_id}") from None
        except BaseException:
            gate._leave(product_id, slot, held=False)
            raise
        finally:
            gate.waiting -= 1
            metrics.GATE_WAITING.dec()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._release()

    def _release(self) -> None:
        for product_id, slot in reversed(self._held):
            self._gate._leave(product_id, slot, held=True)
        self._held.clear()
