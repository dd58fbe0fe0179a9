"""Who the caller is, as AUTH_MODE says: the X-User header (the default) or the Gateway's signed token."""

from __future__ import annotations

from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from orders_service.api.bearer_guard import BearerGuard
from orders_service.api.user_guard import require_user
from orders_service.auth.token_verifier import TokenVerifier
from orders_service.config import Settings

CALLER_GUARD_STATE = "caller_guard"


def caller_guard(settings: Settings) -> Guard:
    """The guard of ``AUTH_MODE`` (the app keeps it in its state under ``CALLER_GUARD_STATE``)."""
    if settings.auth_mode == "jwt":
        return BearerGuard(TokenVerifier.from_settings(settings), settings.auth_realm)
    return require_user


async def identify_caller(connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler) -> None:
    """The protected routes' guard: the app's caller guard puts the user on ``connection.user``."""
    guard: Guard = connection.app.state[CALLER_GUARD_STATE]
    await guard(connection, handler)  # type: ignore[misc]
