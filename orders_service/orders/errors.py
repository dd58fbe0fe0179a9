"""The reasons an order request is refused: what the client asked cannot be done (4xx)."""

from __future__ import annotations

from collections.abc import Sequence

from orders_service.causes import RejectionReason


class OrderRejected(Exception):
    """The order cannot be placed; nothing was reserved or written."""

    def __init__(self, reason: RejectionReason, product_ids: Sequence[int], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.product_ids = sorted(product_ids)
        self.detail = detail


class RestockOverflow(Exception):
    """Putting a cancelled order's units back would push a product's stock beyond integer."""

    detail = "cancelling would push a product's stock beyond the largest storable value; nothing was changed"


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used by this user for a different order request."""

    detail = "this Idempotency-Key was already used with a different request body; use a new key for a new order"


class OrderNotFound(Exception):
    """The caller has no such order: it does not exist or is someone else's (the two are indistinguishable)."""

    def __init__(self, order_id: int | str) -> None:
        self.detail = f"order {order_id} not found"
        super().__init__(self.detail)
