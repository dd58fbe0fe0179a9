"""The order store: places, cancels and reads orders, each call one transaction in one round trip.

Its statements are SQL compiled once (``db/statements.py``), not Advanced-Alchemy repository methods:
placing orders is one statement that locks, decides, reserves and inserts (``place_sql``), which the
repository's methods would spread over several round trips (measured: 1.95 -> 1.28 ms of CPU per
order when orders became one round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from orders_service.db.statements import Step
from orders_service.db.transactions import TransactionRunner
from orders_service.orders.cancel_sql import CANCEL_ORDER, CANCEL_ORDER_VERSIONED
from orders_service.orders.order_rows import order_from_row
from orders_service.orders.place_sql import PLACE_ORDERS, PLACE_ORDERS_VERSIONED
from orders_service.orders.read_routing import ReadRouter
from orders_service.orders.read_sql import FIRST_PAGE, GET_ORDER, NEXT_PAGE
from orders_service.orders.schemas import OrderItemRead, OrderRead

# What the placing statement decided for an order (``place_sql``). The last two are undecided: the order keeps
# its place in line and is tried again (``ProductQueues``).
PlacementState = Literal["placed", "stored", "missing", "short", "too_large", "busy", "held"]
UNDECIDED: frozenset[PlacementState] = frozenset({"busy", "held"})


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order to place: ``wanted`` is product id -> qty, ascending ids (``combine_lines``)."""

    user_id: str
    wanted: dict[int, int]
    idempotency_key: str | None = None
    request_hash: str | None = None


@dataclass(frozen=True, slots=True)
class Placement:
    """What became of one order: placed (``order``), the replay of a stored key (``replay_of``, its ``stored_hash``),
    refused (``missing``, ``short``, ``too_large`` with ``total_cents``), or undecided (``busy``: products another
    transaction held; ``held``: it fits only if an undecided order before it fails)."""

    state: PlacementState
    order: OrderRead | None = None
    missing: list[int] | None = None
    busy: list[int] | None = None
    short: list[int] | None = None
    total_cents: int | None = None
    replay_of: int | None = None
    stored_hash: str | None = None


@dataclass(frozen=True, slots=True)
class CancelOutcome:
    """The order after the call. ``busy`` names products another transaction held, ``order_busy`` says it held the
    order's row (then nothing changed)."""

    order: OrderRead | None
    cancelled_now: bool
    busy: list[int] | None = None
    order_busy: bool = False


class OrderStore:
    """Orders, their items, the stock they reserve and the idempotency keys that name them: the request path's SQL."""

    def __init__(self, runner: TransactionRunner, reads: ReadRouter | None = None) -> None:
        """``reads``: where reads go (default: ``runner``); with read replicas, writes bump the users' versions."""
        self.runner = runner
        self.reads = reads or ReadRouter(runner, None, max_lag=0)
        versioned = self.reads.replicated
        self._place = PLACE_ORDERS_VERSIONED if versioned else PLACE_ORDERS
        self._cancel = CANCEL_ORDER_VERSIONED if versioned else CANCEL_ORDER

    async def place_orders(
        self,
        requests: Sequence[OrderRequest],
        *,
        wait_for: int | None,
        held: Sequence[Sequence[int]],
        deadline: float | None = None,
        lock_timeout_ms: int | None = None,
    ) -> list[Placement]:
        """Place ``requests`` in one transaction, each all or nothing, decided in the order given (``PLACE_ORDERS``).

        Waits for the row of ``wait_for`` only (None: none). ``held[i][j]``: the units of request i's j-th
        product (ascending ids) that undecided orders before it, not among ``requests``, may still take. No
        two requests may share a user and an Idempotency-Key. The placements are in the order of ``requests``.
        """
        line_orders: list[int] = []
        line_products: list[int] = []
        line_qtys: list[int] = []
        line_held: list[int] = []
        for number, (request, request_held) in enumerate(zip(requests, held, strict=True), start=1):
            line_orders += [number] * len(request.wanted)
            line_products += request.wanted
            line_qtys += request.wanted.values()
            line_held += request_held
        params = {
            "owners": [request.user_id for request in requests],
            "keys": [request.idempotency_key for request in requests],
            "hashes": [request.request_hash for request in requests],
            "line_orders": line_orders,
            "line_products": line_products,
            "line_qtys": line_qtys,
            "line_held": line_held,
            "wait_for": wait_for,
            "orders": len(requests),
        }
        ((rows,)) = await self.runner.run(
            [Step(self._place, params)], writes=True, deadline=deadline, lock_timeout_ms=lock_timeout_ms
        )
        return [_placement(request, row) for request, row in zip(requests, rows, strict=True)]

    async def cancel_order(
        self,
        user_id: str,
        order_id: int,
        *,
        wait_for: int | None,
        deadline: float | None = None,
        lock_timeout_ms: int | None = None,
    ) -> CancelOutcome | None:
        """Cancel the user's order if placed, restocking its units; None when the user has no such order.

        Waits for the row of ``wait_for`` only (None: the order's row); see ``CANCEL_ORDER``.
        """
        params = {"owner": user_id, "order_id": order_id, "wait_for": wait_for}
        ((rows,)) = await self.runner.run(
            [Step(self._cancel, params)], writes=True, deadline=deadline, lock_timeout_ms=lock_timeout_ms
        )
        if not rows:
            return None
        (row,) = rows
        order_id_, owner, created_at, total, status, cancelled_at, product_ids, qtys, prices, now, busy, order_busy = (
            row
        )
        if order_busy:
            return CancelOutcome(None, cancelled_now=False, order_busy=True)
        items = [OrderItemRead(*item) for item in zip(product_ids or [], qtys or [], prices or [], strict=True)]
        order = OrderRead(
            order_id_,
            owner,
            created_at.astimezone(UTC),
            total,
            status,
            cancelled_at.astimezone(UTC) if cancelled_at is not None else None,
            items,
        )
        return CancelOutcome(order, cancelled_now=now, busy=busy)

    async def get_for_user(self, user_id: str, order_id: int) -> OrderRead | None:
        """The user's order with its items, or None (whether it is missing or someone else's)."""
        ((rows,)) = await self.reads.read(user_id, [Step(GET_ORDER, {"owner": user_id, "order_id": order_id})])
        return order_from_row(rows[0]) if rows else None

    async def list_for_user(
        self, user_id: str, limit: int, before: tuple[datetime, int] | None = None
    ) -> list[OrderRead]:
        """Up to ``limit`` of the user's orders, newest first, older than ``before`` (keyset pagination).

        One statement: ``ix_orders_user_id_created_at_id`` read in order, each order's items beside it.
        """
        if before is None:
            step = Step(FIRST_PAGE, {"owner": user_id, "limit": limit})
        else:
            params = {"owner": user_id, "limit": limit, "after_created_at": before[0], "after_id": before[1]}
            step = Step(NEXT_PAGE, params)
        ((rows,)) = await self.reads.read(user_id, [step])
        return [order_from_row(row) for row in rows]


def _placement(request: OrderRequest, row: Sequence[Any]) -> Placement:
    """One order's placement from its row (``PLACE_ORDERS``)."""
    _ord, state, missing, busy, short, total, prices, order_id, created_at, stored_hash, stored_order_id, _ = row
    if state == "placed":
        items = [OrderItemRead(p, q, c) for (p, q), c in zip(request.wanted.items(), prices, strict=True)]
        order = OrderRead(order_id, request.user_id, created_at.astimezone(UTC), int(total), "placed", None, items)
        return Placement(state, order=order)
    if state == "stored":
        return Placement(state, replay_of=stored_order_id, stored_hash=stored_hash)
    total_cents = int(total) if total is not None else None
    return Placement(state, missing=missing, busy=busy, short=short, total_cents=total_cents)
