"""The ``X-User`` guard: the Gateway authenticates and names the user in this header."""

from __future__ import annotations

import re
from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from orders_service.models import USER_ID_MAX_LENGTH

USER_HEADER = "X-User"
IDEMPOTENCY_KEY_HEADER = "Idempotency-Key"
GATEWAY_USER_SCHEME = "GatewayUser"
GATEWAY_USER_SECURITY = SecurityScheme(
    type="apiKey",
    name=USER_HEADER,
    security_scheme_in="header",
    description="The user the Gateway authenticated (Basic Auth), forwarded in the X-User header.",
)


class User(msgspec.Struct, frozen=True):
    id: str


class UnsupportedMediaType(HTTPException):
    status_code = 415


# C0 and C1 control characters, DEL, and the comma a proxy puts between folded headers.
_NOT_IN_A_USER = re.compile(r"[\x00-\x1f\x7f-\x9f,]")


async def require_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Put the ``X-User`` user on ``connection.user``, exactly as the Gateway sent it (UTF-8).

    401 when missing or blank. 400 when sent twice (two users: never guess which one the Gateway
    meant), not UTF-8, longer than the column, or holding a control character or a comma, which is
    what a proxy makes of two folded headers. Only ASCII spaces and tabs around it are trimmed.
    """
    values = connection.headers.getall(USER_HEADER, [])
    if len(values) > 1:
        raise ValidationException(f"{USER_HEADER} header given more than once")
    # ASGI servers hand over raw bytes and Litestar decodes header values as latin-1.
    raw = values[0] if values else ""
    try:
        user_id = (raw if raw.isascii() else raw.encode("latin-1").decode("utf-8")).strip(" \t")
    except UnicodeDecodeError:
        raise ValidationException(f"{USER_HEADER} header is not valid UTF-8") from None
    if not user_id:
        raise NotAuthorizedException(f"missing {USER_HEADER} header")
    if _NOT_IN_A_USER.search(user_id):
        raise ValidationException(
            f"{USER_HEADER} header holds a control character or a comma (one user per request, headers not folded)"
        )
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise ValidationException(f"{USER_HEADER} header is longer than {USER_ID_MAX_LENGTH} characters")
    connection.scope["user"] = User(user_id)


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
