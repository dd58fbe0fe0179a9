"""The ``X-User`` guard: the Gateway authenticates and names the user in this header."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import HTTPException, NotAuthorizedException, ValidationException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from orders_service.models import USER_ID_MAX_LENGTH

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


class UnsupportedMediaType(HTTPException):
    status_code = 415


async def require_user(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """Put the ``X-User`` user on ``connection.user``; 401 when missing or blank, 400 when too long."""
    values = connection.headers.getall(USER_HEADER, [])
    if len(values) > 1:
        # Two users in one request: never guess which one the Gateway meant.
        raise ValidationException(f"{USER_HEADER} header given more than once")
    user_id = values[0].strip() if values else ""
    if not user_id:
        raise NotAuthorizedException(f"missing {USER_HEADER} header")
    if len(user_id) > USER_ID_MAX_LENGTH:
        raise ValidationException(f"{USER_HEADER} header is longer than {USER_ID_MAX_LENGTH} characters")
    connection.scope["user"] = User(user_id)


async def require_json_body(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """415 unless the body is declared as JSON (``application/json`` or a ``+json`` type); 400 when it is empty."""
    media_type = connection.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json" and not media_type.endswith("+json"):
        raise UnsupportedMediaType(f"Content-Type must be application/json, got {media_type or 'nothing'!r}")
    if connection.headers.get("content-length") == "0":
        raise ValidationException('the request body is empty; send {"items": [{"product_id": …, "qty": …}]}')


def provide_user(request: Request[User, Any, Any]) -> User:
    """Dependency: the user ``require_user`` authenticated."""
    return request.user
