"""The ``X-User`` guard: the Gateway authenticates and names the user in this header."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from orders_service.auth.user_ids import NOT_IN_A_USER
from orders_service.db.models import USER_ID_MAX_LENGTH

USER_HEADER = "X-User"
GATEWAY_USER_SCHEME = "GatewayUser"
GATEWAY_USER_SECURITY = SecurityScheme(
    type="apiKey",
    name=USER_HEADER,
    security_scheme_in="header",
    description="The user the Gateway authenticated (Basic Auth), forwarded in the X-User header.",
)


class User(msgspec.Struct, frozen=True):
    id: str


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
    if NOT_IN_A_USER.search(user_id):
        raise ValidationException(
            f"{USER_HEADER} header holds a control character or a comma (one user per request, headers not folded)"
        )
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise ValidationException(f"{USER_HEADER} header is longer than {USER_ID_MAX_LENGTH} characters")
    connection.scope["user"] = User(user_id)
