"""Checks of a request before its handler runs: its URL; an order's framing before its body is decoded."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, ValidationException

from orders_service.api.url_checks import require_canonical_order_id, require_plain_query

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"


class UnsupportedMediaType(HTTPException):
    status_code = 415


async def check_order_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``POST /orders``, after the X-User guard.

    400 when ``Idempotency-Key`` is sent more than once (never guess which key the client
    meant); 415 unless the body is declared as JSON (``application/json`` or a ``+json`` type);
    400 when the body is empty, however it was framed (``Content-Length: 0``, no
    ``Content-Length`` at all as ``curl -X POST`` sends, an empty chunked body). The body read
    here is the one the handler decodes (Litestar keeps it). A hook, not guards: Litestar copies
    the route handler for every guard it calls.
    """
    headers = request.headers
    if len(headers.getall(IDEMPOTENCY_KEY_HEADER, ())) > 1:
        raise ValidationException(f"{IDEMPOTENCY_KEY_HEADER} header given more than once")
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media_type or 'nothing'!r}")
    if not await request.body():
        raise ValidationException('the request body is empty; send {"items": [{"product_id": …, "qty": …}]}')


async def check_order_url(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``GET|HEAD /orders/{order_id}``."""
    require_canonical_order_id(request)


async def check_cancel_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``POST /orders/{order_id}/cancel``."""
    require_canonical_order_id(request)


async def check_listing_query(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``GET|HEAD /orders/me``."""
    require_plain_query(request, numbers=("limit",), texts=("cursor",))
