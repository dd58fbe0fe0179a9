"""Checks of a request before its handler runs: its URL, its framing, and its body, read whole and in time.

A handler takes a database connection only after these hooks have read the whole body, so a
client that sends it slowly, stops or leaves never holds one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request
from litestar.exceptions import HTTPException, InternalServerException, ValidationException

from orders_service.api.url_checks import require_canonical_order_id, require_plain_query

IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
BODY_READ_TIMEOUT_STATE = "body_read_timeout"  # app state key: BODY_READ_TIMEOUT, in seconds
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a request the client abandoned


class UnsupportedMediaType(HTTPException):
    status_code = 415


class RequestTimeout(HTTPException):
    status_code = 408


class ClientClosedRequest(HTTPException):
    """The body ended before its end: the client left, or its chunked framing is broken.

    Granian reports both alike (``http.disconnect``, granian/src/asgi/io.rs ``receive``); a client
    still listening reads this answer, and for one that left it is the status logged and counted.
    """

    status_code = CLIENT_CLOSED_REQUEST


async def read_body(request: Request[Any, Any, Any]) -> bytes:
    """The whole body, within ``BODY_READ_TIMEOUT`` (Granian has a timeout for headers only).

    408, and the connection closed, past the timeout; 499 when the body ends early. Litestar's
    ``request.stream()`` raises InternalServerException only for the ``http.disconnect`` that ends
    such a body (litestar/connection/request.py); tests/api/test_bad_clients.py pins it. The body is
    kept: the handler's decoding reads the same bytes. ``asyncio.timeout`` costs 3-6 µs a request
    (measured under uvloop), against a millisecond or more for an order.
    """
    timeout: float = request.app.state[BODY_READ_TIMEOUT_STATE]
    try:
        async with asyncio.timeout(timeout):
            return await request.body()
    except TimeoutError:
        raise RequestTimeout(
            f"the request body did not arrive within {timeout:g} s", headers={"Connection": "close"}
        ) from None
    except InternalServerException:
        raise ClientClosedRequest(
            "the request body ended early: the connection closed before its end, or its chunked framing is broken"
        ) from None


def _check_transfer_coding(request: Request[Any, Any, Any]) -> None:
    """400 for a transfer coding other than ``chunked``.

    Granian (hyper) reads ``Transfer-Encoding: gzip, chunked`` as plain chunked and hands over
    the still-compressed bytes; a proxy in front may decode them: RFC 9112 section 6.1 lets a
    server refuse the codings it does not apply. (A Content-Length beside chunked never reaches
    the app: hyper drops it and reads the chunks, as RFC 9112 section 6.3 says.)
    """
    codings = request.headers.getall("transfer-encoding", ())
    if codings and [coding.strip().lower() for coding in ",".join(codings).split(",")] != ["chunked"]:
        raise ValidationException(f"unsupported Transfer-Encoding {', '.join(codings)!r}: send chunked or none")


async def check_order_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``POST /orders``, after the X-User guard.

    400 when ``Idempotency-Key`` or ``Content-Type`` is sent more than once (never guess which
    one the client meant), or for a transfer coding other than chunked; 415 unless the body is
    declared as JSON (``application/json`` or a ``+json`` type) without a content coding; 400
    when the body is empty, however it was framed (``Content-Length: 0``, no ``Content-Length``
    at all as ``curl -X POST`` sends, an empty chunked body). A hook, not guards: Litestar copies
    the route handler for every guard it calls.
    """
    headers = request.headers
    if len(headers.getall(IDEMPOTENCY_KEY_HEADER, ())) > 1:
        raise ValidationException(f"{IDEMPOTENCY_KEY_HEADER} header given more than once")
    content_types = headers.getall("content-type", ())
    if len(content_types) > 1:
        raise ValidationException("Content-Type header given more than once")
    media_type = (content_types[0] if content_types else "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media_type or 'nothing'!r}")
    # Every value of every Content-Encoding line: two lines (identity, then gzip) say what one `identity, gzip` says.
    lines = headers.getall("content-encoding", ())
    codings = [coding.strip().lower() for coding in ",".join(lines).split(",")] if lines else []
    if any(coding != "identity" for coding in codings):
        raise UnsupportedMediaType(f"Content-Encoding {', '.join(codings)!r} is not supported: send the JSON as it is")
    _check_transfer_coding(request)
    if not await read_body(request):
        raise ValidationException('the request body is empty; send {"items": [{"product_id": …, "qty": …}]}')


async def check_order_url(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``GET|HEAD /orders/{order_id}``."""
    require_canonical_order_id(request)


async def check_cancel_request(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``POST /orders/{order_id}/cancel``: its URL, then its body read whole (and ignored).

    A cancel takes no body, but one that is sent must arrive whole before anything is written.
    """
    require_canonical_order_id(request)
    _check_transfer_coding(request)
    await read_body(request)


async def check_listing_query(request: Request[Any, Any, Any]) -> None:
    """``before_request`` of ``GET|HEAD /orders/me``."""
    require_plain_query(request, numbers=("limit",), texts=("cursor",))
