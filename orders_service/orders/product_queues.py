"""The one way orders are placed (and cancellations wait for a product), per worker: a queue per product.

Every order of a product decrements the same row, and PostgreSQL serialises them on its lock:
each holds it until its commit is flushed. With ~1 ms flushes (cloud block storage) one order per
transaction caps a product at about 600 orders/s, whatever the hardware; ten orders in one
transaction reach about 5,800/s on the same row (pgbench, this machine). So:

- **One transaction at a time per product.** Every transaction of this worker that waits for a
  product's row runs from that product's queue, one after the other. An order joins the queue of
  the product of its lines most of this worker's orders are using (the likeliest to be held; the
  lowest id when none is). If no transaction of that product is running, the order's own starts at
  once, alone: a lone order never waits for company. Orders that arrive while one runs wait in the
  queue, holding nothing; the next transaction takes them all, up to ``ORDER_BATCH_MAX``, and
  decides them in arrival order in one statement (``PLACE_ORDERS``; a lone order is a batch of one).
- **Orders in general, where it pays.** An order whose queue is idle but that finds every pooled
  connection in use waits in the queue of any product instead, whose transaction waits for no row:
  under load, the commits queue for the database, not the orders, each flushing several orders.
- **Arrival order per product.** An order keeps its place until it is decided: its units count,
  for the orders that arrived after it, as taken (``held``) until then. A transaction never waits
  for a second row (``lock_rule``): an order one of whose products another transaction holds is
  *busy*, and moves to the queue of that product, whose next transaction waits for that row alone,
  holding nothing. An order that fits only if an undecided order before it fails is *held*: it
  waits, in no queue, until an order before it is decided, then rejoins its queue. So an order is
  never refused for units an order that arrived later at this worker got.
- **Idempotency-Keys.** The first request with a user's key in this worker owns it. A later one
  (a resend) waits, in no queue and holding nothing, for the first to be decided: then it replays
  the first's order (or answers 422 for another body), or, if the first was not placed, takes its
  own place in line. A key is written only with its order, after every wait (``place_sql``).
- **Bounds.** At most ``ORDER_QUEUE_PER_PRODUCT`` orders wait for one product and
  ``ORDER_QUEUE_PER_WORKER`` in all; past them an order is refused at once (503 ``product_busy``,
  ``queue_full``). A waiting order is answered by its deadline: ``DB_LOCK_TIMEOUT_MS`` after its
  arrival for a product (each transaction's ``lock_timeout`` ends by its orders' earliest; then 503
  ``product_busy`` or ``lock_timeout``), ``DB_POOL_TIMEOUT`` for a connection (``pool_exhausted``).
- **Faults.** A statement error (not a fault: a constraint, a value out of range) places the
  batch's orders again, each in a transaction of its own, in their places, so that one bad order
  fails alone. A fault (connection lost, timeouts) answers every order of the batch as it would
  answer one: 503, with "outcome unknown" when the commit may have happened.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, auto
from typing import Any

from orders_service.causes import UnavailableCause
from orders_service.db.transactions import StatementFailed
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics
from orders_service.orders.store import UNDECIDED, CancelOutcome, OrderRequest, OrderStore, Placement

logger = logging.getLogger(__name__)

ANY_PRODUCT = 0  # the queue of orders waiting for a connection (no product has id 0: ids are positive)


@dataclass(frozen=True, slots=True)
class _Cancel:
    user_id: str
    order_id: int


class _State(Enum):
    NEW = auto()
    QUEUED = auto()  # in a product's queue
    QUEUED_ANY = auto()  # in the queue of any product: waiting for a connection
    HELD = auto()  # fits only if an earlier order fails: waiting for one to be decided
    TWIN = auto()  # a later request with a key an earlier one in this worker owns
    RUNNING = auto()
    DONE = auto()


_WAITING = frozenset({_State.QUEUED, _State.QUEUED_ANY, _State.HELD, _State.TWIN})


@dataclass(slots=True, eq=False)
class _Entry:
    seq: int  # arrival order in this worker
    work: OrderRequest | _Cancel
    lock_deadline: float  # waits for products (queues and row locks) end by then
    deadline: float  # the request's whole budget
    outcome: asyncio.Future[Any]
    state: _State = _State.NEW
    queue: int = ANY_PRODUCT  # the queue it waits in, or last ran from
    alone: bool = False  # in a transaction of its own (its batch's statement failed)
    timer: asyncio.TimerHandle | None = None

    @property
    def products(self) -> Iterable[int]:
        return self.work.wanted if isinstance(self.work, OrderRequest) else ()


@dataclass(slots=True)
class _Queue:
    pending: list[_Entry] = field(default_factory=list)  # by arrival
    running: bool = False


def _key_of(work: OrderRequest | _Cancel) -> tuple[str, str] | None:
    if isinstance(work, OrderRequest) and work.idempotency_key is not None:
        return (work.user_id, work.idempotency_key)
    return None


def _by_arrival(entry: _Entry) -> int:
    return entry.seq


class ProductQueues:
    """Places orders and runs cancellations' waits for a product, one transaction at a time per product."""

    def __init__(
        self,
        store: OrderStore,
        *,
        max_orders: int,
        lock_timeout: float,
        per_product: int,
        per_worker: int,
        wait_seconds: float = 0.0,
    ) -> None:
        """``max_orders``: at most this many orders per transaction (1: never combine); ``lock_timeout``: how long
        an order may wait for its products in all; ``per_product``, ``per_worker``: how many orders may wait;
        ``wait_seconds``: how long a transaction formed under load waits for more orders before it starts."""
        self.store = store
        self.max_orders = max_orders
        self.lock_timeout = lock_timeout
        self.per_product = per_product
        self.per_worker = per_worker
        self.wait_seconds = wait_seconds
        self._queues: dict[int, _Queue] = {}
        self._holds: dict[int, dict[int, _Entry]] = {}  # product -> undecided orders with it, by arrival
        self._held: dict[int, set[_Entry]] = {}  # product -> HELD orders with it
        self._keys: dict[tuple[str, str], list[_Entry]] = {}  # (user, key) -> its owner, then its twins
        self._seq = itertools.count(1)
        self._waiting = 0
        self._tasks: set[asyncio.Task[None]] = set()

    def queued(self, product_id: int) -> int:
        """How many orders wait in ``product_id``'s queue."""
        queue = self._queues.get(product_id)
        return len(queue.pending) if queue is not None else 0

    @property
    def idle(self) -> bool:
        """Nothing queued, running, held or registered: every order this worker took has been answered."""
        return not (self._queues or self._holds or self._held or self._keys or self._waiting)

    @property
    def waiting(self) -> int:
        """How many orders and cancellations wait in this worker (queued, held, or twins)."""
        return self._waiting

    async def place(self, request: OrderRequest, deadline: float) -> Placement:
        """Place ``request``: its placement once decided (placed, stored, or refused); 503 past its deadlines."""
        loop = asyncio.get_running_loop()
        lock_deadline = min(deadline, loop.time() + self.lock_timeout)
        entry = _Entry(next(self._seq), request, lock_deadline, deadline, loop.create_future())
        key = _key_of(request)
        twins = self._keys.get(key) if key is not None else None
        if twins is not None:
            self._check_room(None)
            self._register(entry)
            twins.append(entry)
            self._set(entry, _State.TWIN)
            placement: Placement = await self._answer(entry)
            return placement
        queue_key = self._queue_for(request.wanted)
        idle = queue_key not in self._queues
        if idle and self.max_orders > 1 and self.store.runner.saturated:
            queue_key, idle = ANY_PRODUCT, False
        if not idle:
            self._check_room(queue_key)
        self._register(entry)
        if key is not None:
            self._keys[key] = [entry]
        if idle:
            await self._run_alone_now(queue_key, entry)
        else:
            self._enqueue(entry, queue_key)
        decided: Placement = await self._answer(entry)
        return decided

    async def cancel(self, user_id: str, order_id: int, deadline: float) -> CancelOutcome | None:
        """Cancel the user's order (None when there is no such order): the first try waits for the order's row
        only; one that finds a product busy waits in that product's queue, then for its row alone."""
        loop = asyncio.get_running_loop()
        lock_deadline = min(deadline, loop.time() + self.lock_timeout)
        outcome = await self.store.cancel_order(user_id, order_id, wait_for=None, deadline=deadline)
        while outcome is not None and (outcome.busy or outcome.order_busy):
            if loop.time() >= lock_deadline:
                raise DatabaseUnavailable("product_busy", context=f"order {order_id}")
            metrics.BUSY_PRODUCT_RETRIES.inc()
            if outcome.busy:
                entry = _Entry(
                    next(self._seq), _Cancel(user_id, order_id), lock_deadline, deadline, loop.create_future()
                )
                self._enqueue(entry, outcome.busy[0])
                outcome = await self._answer(entry)
            else:
                outcome = await self.store.cancel_order(
                    user_id, order_id, wait_for=None, deadline=deadline, lock_timeout_ms=_ms_until(lock_deadline)
                )
        return outcome

    # --- where an order waits -----------------------------------------------------------------------------------

    def _queue_for(self, wanted: Iterable[int]) -> int:
        """The product of ``wanted`` whose queue is longest (running counts one); the lowest id when none has one."""
        best, best_load = 0, 0
        for product_id in wanted:
            queue = self._queues.get(product_id)
            load = len(queue.pending) + queue.running if queue is not None else 0
            if best == 0 or load > best_load:
                best, best_load = product_id, load
        return best

    def _check_room(self, queue_key: int | None) -> None:
        """Refuse a new order at once when it would wait beyond the bounds."""
        if self._waiting >= self.per_worker:
            raise DatabaseUnavailable("queue_full", context=f"{self._waiting} orders waiting")
        if queue_key:
            queue = self._queues.get(queue_key)
            if queue is not None and len(queue.pending) >= self.per_product:
                raise DatabaseUnavailable("product_busy", context=f"product {queue_key}: {len(queue.pending)} waiting")

    def _register(self, entry: _Entry) -> None:
        for product_id in entry.products:
            self._holds.setdefault(product_id, {})[entry.seq] = entry

    def _enqueue(self, entry: _Entry, queue_key: int) -> None:
        queue = self._queues.get(queue_key)
        if queue is None:
            queue = self._queues[queue_key] = _Queue()
        bisect.insort(queue.pending, entry, key=_by_arrival)
        entry.queue = queue_key
        self._set(entry, _State.QUEUED_ANY if queue_key == ANY_PRODUCT else _State.QUEUED)
        if not queue.running:
            queue.running = True
            self._start_next(queue_key, queue)

    def _set(self, entry: _Entry, state: _State) -> None:
        """Move ``entry`` to ``state``: the waiting gauges and count, and its give-up timer, follow."""
        if entry.state in _WAITING:
            _gauge(entry.state).dec()
            self._waiting -= 1
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        entry.state = state
        if state in _WAITING:
            _gauge(state).inc()
            self._waiting += 1
            loop = asyncio.get_running_loop()
            if state is _State.QUEUED_ANY:
                expires = min(entry.deadline, loop.time() + self.store.runner.pool_timeout)
            elif state is _State.TWIN:
                expires = entry.deadline
            else:
                expires = entry.lock_deadline
            entry.timer = loop.call_at(expires, self._expire, entry)

    def _expire(self, entry: _Entry) -> None:
        """A waiting order's deadline: out of every queue, and 503."""
        if entry.state not in _WAITING:
            return
        cause: UnavailableCause = "pool_exhausted" if entry.state is _State.QUEUED_ANY else "product_busy"
        context = None if cause == "pool_exhausted" else f"product {entry.queue or next(iter(entry.products), 0)}"
        self._leave(entry)
        self._finish(entry, DatabaseUnavailable(cause, context=context))

    def _leave(self, entry: _Entry) -> None:
        """Take a waiting ``entry`` out of its queue (or the held or twin waits)."""
        if entry.state in (_State.QUEUED, _State.QUEUED_ANY):
            queue = self._queues[entry.queue]
            queue.pending.remove(entry)
        elif entry.state is _State.HELD:
            for product_id in entry.products:
                self._held[product_id].discard(entry)
                if not self._held[product_id]:
                    del self._held[product_id]
        self._set(entry, _State.NEW)

    async def _answer(self, entry: _Entry) -> Any:  # Placement, or CancelOutcome | None
        try:
            return await entry.outcome
        except asyncio.CancelledError:
            if entry.state in _WAITING:  # the request left: out of every queue (a running transaction goes on)
                self._leave(entry)
                self._finish(entry, None)
            raise

    # --- transactions -------------------------------------------------------------------------------------------

    async def _run_alone_now(self, queue_key: int, entry: _Entry) -> None:
        """The queue is idle: the order's transaction starts at once, in the request's own task."""
        queue = self._queues[queue_key] = _Queue(running=True)
        try:
            await self._run(queue_key, [entry])
        finally:
            self._after_transaction(queue_key, queue)

    def _start_next(self, queue_key: int, queue: _Queue) -> None:
        task = asyncio.get_running_loop().create_task(self._run_next(queue_key, queue))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _after_transaction(self, queue_key: int, queue: _Queue) -> None:
        """The queue's transaction ended: start the next one for the orders waiting, or let the queue go."""
        if queue.pending:
            self._start_next(queue_key, queue)
            return
        queue.running = False
        if self._queues.get(queue_key) is queue:
            del self._queues[queue_key]

    async def _run_next(self, queue_key: int, queue: _Queue) -> None:
        try:
            if self.wait_seconds > 0 and 0 < len(queue.pending) < self.max_orders:
                loop = asyncio.get_running_loop()
                pause = min(self.wait_seconds, min(entry.lock_deadline for entry in queue.pending) - loop.time())
                if pause > 0:
                    await asyncio.sleep(pause)  # let more orders join this transaction
            batch = self._take(queue)
            if batch:
                await self._run(queue_key, batch)
        finally:
            self._after_transaction(queue_key, queue)

    def _take(self, queue: _Queue) -> list[_Entry]:
        """The next transaction's work, in arrival order: up to ``max_orders`` orders, or one cancellation, or one
        order that must go alone."""
        pending = queue.pending
        if not pending:
            return []
        first = pending[0]
        if isinstance(first.work, _Cancel) or first.alone:
            count = 1
        else:
            count = 1
            while (
                count < min(len(pending), self.max_orders)
                and isinstance(pending[count].work, OrderRequest)
                and not pending[count].alone
            ):
                count += 1
        batch = pending[:count]
        del pending[:count]
        return batch

    async def _run(self, queue_key: int, batch: list[_Entry]) -> None:
        """Run one transaction for ``batch`` (from ``queue_key``'s queue) and settle each of its entries."""
        for entry in batch:
            self._set(entry, _State.RUNNING)
            entry.queue = queue_key
        wait_for = queue_key if queue_key != ANY_PRODUCT else None
        deadline = min(entry.deadline for entry in batch)
        lock_timeout_ms = _ms_until(min(entry.lock_deadline for entry in batch)) if wait_for is not None else None
        work = batch[0].work
        try:
            if isinstance(work, _Cancel):
                cancelled = await self.store.cancel_order(
                    work.user_id, work.order_id, wait_for=wait_for, deadline=deadline, lock_timeout_ms=lock_timeout_ms
                )
                self._finish(batch[0], cancelled)
                return
            placements = await self.store.place_orders(
                [entry.work for entry in batch],  # type: ignore[misc]  # a batch of orders (``_take``)
                wait_for=wait_for,
                held=self._held_before(batch),
                deadline=deadline,
                lock_timeout_ms=lock_timeout_ms,
            )
        except StatementFailed as failed:
            self._statement_failed(batch, queue_key, failed)
            return
        except DatabaseUnavailable as unavailable:
            self._unavailable(batch, queue_key, unavailable)
            return
        except BaseException as failure:
            for entry in batch:
                self._finish(entry, failure)
            if not isinstance(failure, Exception):
                raise
            return
        metrics.ORDERS_PER_TRANSACTION.observe(len(batch))
        for entry, placement in zip(batch, placements, strict=True):
            self._settle(entry, placement)

    def _statement_failed(self, batch: list[_Entry], queue_key: int, failed: StatementFailed) -> None:
        """Not a fault: a value the statement refused. Each order goes again in a transaction of its own, in its
        place, so that only the bad one fails."""
        if len(batch) == 1:
            self._finish(batch[0], failed)
            return
        # The API lets no such value through, and the statement's tripwire fails it on a bug: worth a look.
        logger.error("a transaction of %d orders failed (%s); each goes again alone", len(batch), failed)
        for entry in batch:
            entry.alone = True
            self._retry(entry, queue_key)

    def _unavailable(self, batch: list[_Entry], queue_key: int, unavailable: DatabaseUnavailable) -> None:
        """A lock timeout ends the orders whose time for products is up; the others keep their place. Any other
        fault answers every order of the batch."""
        if unavailable.cause == "lock_timeout":
            now = asyncio.get_running_loop().time()
            late = [entry for entry in batch if entry.lock_deadline <= now + _SLACK]
            if late and len(late) < len(batch):
                for entry in batch:
                    if entry in late:
                        self._finish(entry, unavailable)
                    else:
                        self._retry(entry, queue_key)
                return
        for entry in batch:
            self._finish(entry, unavailable)

    def _held_before(self, batch: Sequence[_Entry]) -> list[list[int]]:
        """Per order of ``batch`` and product (ascending), the units undecided orders that arrived before it, and are
        not in ``batch``, may still take."""
        members = {entry.seq for entry in batch}
        held = [[0] * len(entry.work.wanted) for entry in batch]  # type: ignore[union-attr]
        lines: dict[int, list[tuple[int, int, int]]] = {}  # product -> (seq, order index, line index), by arrival
        for index, entry in enumerate(batch):
            for line, product_id in enumerate(entry.products):
                lines.setdefault(product_id, []).append((entry.seq, index, line))
        for product_id, product_lines in lines.items():
            taken = 0
            earlier = iter(self._holds[product_id].values())
            other = next(earlier, None)
            for seq, index, line in product_lines:
                while other is not None and other.seq < seq:
                    if other.seq not in members:
                        taken += other.work.wanted[product_id]  # type: ignore[union-attr]
                    other = next(earlier, None)
                held[index][line] = taken
        return held

    # --- after a transaction ------------------------------------------------------------------------------------

    def _settle(self, entry: _Entry, placement: Placement) -> None:
        if placement.state not in UNDECIDED:
            self._finish(entry, placement)
        elif entry.outcome.done():  # the request left while its transaction ran
            self._finish(entry, None)
        elif placement.state == "busy" and placement.busy:
            metrics.BUSY_PRODUCT_RETRIES.inc()
            self._retry(entry, placement.busy[0])
        else:
            self._hold(entry)

    def _retry(self, entry: _Entry, queue_key: int) -> None:
        """Back in line, in its place (by arrival), unless its time for products is up."""
        if asyncio.get_running_loop().time() >= entry.lock_deadline:
            self._finish(entry, DatabaseUnavailable("product_busy", context=f"product {queue_key}"))
        else:
            self._enqueue(entry, queue_key)

    def _hold(self, entry: _Entry) -> None:
        """It fits only if an undecided order before it fails: wait for one to be decided (none left: go again)."""
        if not any(self._earlier_undecided(entry, product_id) for product_id in entry.products):
            self._retry(entry, self._queue_for(entry.products))
            return
        for product_id in entry.products:
            self._held.setdefault(product_id, set()).add(entry)
        self._set(entry, _State.HELD)

    def _earlier_undecided(self, entry: _Entry, product_id: int) -> bool:
        first = next(iter(self._holds[product_id]))
        return first < entry.seq

    def _finish(self, entry: _Entry, result: Placement | CancelOutcome | BaseException | None) -> None:
        """``entry`` is decided (or has failed, or left): answer it, and let the orders that waited for it go."""
        self._set(entry, _State.DONE)
        if not entry.outcome.done():
            if isinstance(result, asyncio.CancelledError):
                entry.outcome.cancel()
            elif isinstance(result, BaseException):
                entry.outcome.set_exception(result)
            elif result is not None:
                entry.outcome.set_result(result)
        if not isinstance(entry.work, OrderRequest):
            return
        for product_id in entry.work.wanted:
            holds = self._holds[product_id]
            del holds[entry.seq]
            if not holds:
                del self._holds[product_id]
            for held in list(self._held.get(product_id, ())):
                if held.seq > entry.seq:
                    self._leave(held)
                    self._retry(held, self._queue_for(held.products))
        self._release_key(entry, result if isinstance(result, Placement) else None)

    def _release_key(self, entry: _Entry, placement: Placement | None) -> None:
        """After the owner of a key is decided: its twins replay its order, or the next one takes over."""
        key = _key_of(entry.work)
        twins = self._keys.get(key) if key is not None else None
        if twins is None or entry not in twins:
            return
        owner = twins[0] is entry
        twins.remove(entry)
        if owner and placement is not None and placement.state in ("placed", "stored"):
            replay = placement
            if placement.order is not None:  # placed just now: its twins need not read it back
                request_hash = entry.work.request_hash  # type: ignore[union-attr]
                replay = Placement(
                    "stored", order=placement.order, replay_of=placement.order.id, stored_hash=request_hash
                )
            del self._keys[key]  # type: ignore[arg-type]
            for twin in twins:
                self._leave(twin)
                self._finish(twin, replay)
            return
        if not twins:
            del self._keys[key]  # type: ignore[arg-type]
        elif owner:  # the first was not placed: the next one is placed in its own place in line
            successor = twins[0]
            self._leave(successor)
            self._retry(successor, self._queue_for(successor.products))


_SLACK = 0.005  # a lock timeout ends the orders whose time was up within this margin


def _ms_until(when: float) -> int:
    return max(1, math.ceil((when - asyncio.get_running_loop().time()) * 1000))


def _gauge(state: _State) -> Any:
    """Orders waiting for a connection count as the pool's queue; the others as the products' queues."""
    return (
        metrics.POOL_WAITING.labels(pool=metrics.REQUEST_POOL) if state is _State.QUEUED_ANY else metrics.GATE_WAITING
    )
