"""The events other services receive: CloudEvents 1.0 in structured JSON mode, built at publish time.

``data`` is the order exactly as the API returns it (``OrderRead``, encoded by msgspec as Litestar
encodes responses): a ``placed`` event shows the order as it was placed (status ``placed``, no
``cancelled_at``), a ``cancelled`` event as it was cancelled. The rest of an order never changes,
so building the event from the order's rows when it is published gives the same bytes as building
it when the change was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from uuid import UUID

import msgspec

from orders_service.db.models import ORDER_CANCELLED, ORDER_PLACED, EventType
from orders_service.orders.order_rows import order_from_row
from orders_service.orders.schemas import OrderRead

SPEC_VERSION = "1.0"
CONTENT_TYPE = "application/cloudevents+json"
DATA_CONTENT_TYPE = "application/json"
EVENT_TYPES: tuple[EventType, ...] = (ORDER_PLACED, ORDER_CANCELLED)


class CloudEvent(msgspec.Struct):
    """The envelope, attribute names as the CloudEvents JSON format spells them."""

    specversion: str
    id: str
    source: str
    type: str
    subject: str
    time: datetime
    datacontenttype: str
    sequence: str  # the CloudEvents sequence extension: orders an order's events (placed < cancelled)
    data: OrderRead


@dataclass(frozen=True, slots=True)
class PendingEvent:
    """An outbox row joined with its order's row (``order_*`` None when the order no longer exists)."""

    outbox_id: int
    event_id: UUID
    type: EventType
    occurred_at: datetime
    order_id: int
    order_user_id: str | None
    order_created_at: datetime | None
    order_total_cents: int | None
    order_cancelled_at: datetime | None
    order_items: str | None


_encode = msgspec.json.Encoder().encode


def order_as_of(event: PendingEvent) -> OrderRead | None:
    """The order as the API showed it right after the event's change; None if the order is gone."""
    if event.order_user_id is None or event.order_created_at is None or event.order_total_cents is None:
        return None
    if event.type == ORDER_PLACED:
        status, cancelled_at = "placed", None
    else:
        status, cancelled_at = "cancelled", event.order_cancelled_at
    row = (event.order_id, event.order_user_id, event.order_created_at, event.order_total_cents)
    return order_from_row((*row, status, cancelled_at, event.order_items))


def sequence_of(event: PendingEvent) -> str:
    """The event's outbox id, zero-padded to 20 digits: compared as strings, a later change of an order (its
    cancellation) sorts after an earlier one (its placement), whatever order they arrive in."""
    return f"{event.outbox_id:020d}"


def encode_event(event: PendingEvent, order: OrderRead, source: str) -> bytes:
    """The CloudEvent of ``event`` as the JSON a consumer receives."""
    envelope = CloudEvent(
        specversion=SPEC_VERSION,
        id=str(event.event_id),
        source=source,
        type=event.type,
        subject=str(event.order_id),
        time=event.occurred_at.astimezone(UTC),
        datacontenttype=DATA_CONTENT_TYPE,
        sequence=sequence_of(event),
        data=order,
    )
    return _encode(envelope)
