"""The bearer guard (AUTH_MODE=jwt): the user is the one the Gateway's signed token names, whatever X-User says."""

from __future__ import annotations

import re
from typing import Any

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.spec import SecurityScheme

from orders_service.api.user_guard import User
from orders_service.auth.refusals import TokenRefused
from orders_service.auth.token_verifier import TokenVerifier
from orders_service.observability import metrics

AUTHORIZATION = "Authorization"
BEARER_SCHEME = "GatewayToken"
BEARER_SECURITY = SecurityScheme(
    type="http",
    scheme="bearer",
    bearer_format="JWT",
    description="A JWT the Gateway signs for the user it authenticated (AUTH_MODE=jwt); the user is its `sub` "
    "(or AUTH_USER_CLAIM). X-User is ignored.",
)
# A token is three base64url parts (a JWE's five are not accepted); 8 KiB is far above any Gateway's.
MAX_TOKEN_LENGTH = 8192
_BEARER = re.compile(r"bearer +([A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*) *", re.IGNORECASE)


class BearerGuard:
    """Puts the token's user on ``connection.user``; 401 with a ``reason`` and RFC 6750's challenge otherwise."""

    def __init__(self, verifier: TokenVerifier, realm: str) -> None:
        self.verifier = verifier
        self._realm = realm

    async def __call__(self, connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
        try:
            user_id = await self.verifier.user_of(self._token_of(connection))
        except TokenRefused as refused:
            metrics.AUTH_REFUSALS_BY_REASON[refused.reason].inc()
            raise NotAuthorizedException(
                refused.description,
                headers={"WWW-Authenticate": self._challenge(refused)},
                extra={"reason": refused.reason},
            ) from None
        connection.scope["user"] = User(user_id)

    async def close(self) -> None:
        await self.verifier.close()

    @staticmethod
    def _token_of(connection: ASGIConnection[Any, Any, Any, Any]) -> str:
        values = connection.headers.getall(AUTHORIZATION, [])
        if not values or not values[0][:7].lower().startswith("bearer"):
            raise TokenRefused("missing")
        if len(values) > 1 or len(values[0]) > MAX_TOKEN_LENGTH:
            raise TokenRefused("malformed")
        matched = _BEARER.fullmatch(values[0])
        if matched is None:
            raise TokenRefused("malformed")
        return matched[1]

    def _challenge(self, refused: TokenRefused) -> str:
        # RFC 6750 section 3.1: a request without credentials gets no error code.
        if refused.reason == "missing":
            return f'Bearer realm="{self._realm}"'
        return f'Bearer realm="{self._realm}", error="invalid_token", error_description="{refused.description}"'
