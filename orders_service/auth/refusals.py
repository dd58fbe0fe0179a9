"""A bearer token refused (401, with its reason), or signing keys the service cannot get (503)."""

from __future__ import annotations

from orders_service.causes import AuthRefusalReason

# The refusal's text for the problem body and WWW-Authenticate's error_description: fixed per reason, so that nothing
# the client sent (a token, a claim) is ever echoed or logged.
DESCRIPTIONS: dict[AuthRefusalReason, str] = {
    "missing": "no bearer token (Authorization: Bearer <JWT>)",
    "malformed": "the bearer token is not a well-formed signed JWT",
    "expired": "the token has expired",
    "not_yet_valid": "the token is not valid yet",
    "bad_signature": "the token's signature does not verify",
    "wrong_audience": "the token is not for this audience",
    "wrong_issuer": "the token is not from the expected issuer",
    "missing_claim": "the token lacks a required claim (exp, iss, aud, or the user's)",
    "algorithm_not_allowed": "the token's algorithm is not allowed, or not its key's",
    "unknown_key": "the token's key (kid) is not one of the issuer's keys",
    "lifetime_too_long": "the token lives longer than AUTH_MAX_LIFETIME_SECONDS",
    "bad_user": "the token's user is not a valid user id",
}


class TokenRefused(Exception):
    """The request's bearer token does not identify a user."""

    def __init__(self, reason: AuthRefusalReason) -> None:
        super().__init__(reason)
        self.reason: AuthRefusalReason = reason
        self.description = DESCRIPTIONS[reason]


class SigningKeysUnavailable(Exception):
    """The token names a key the service does not have and cannot fetch now: it cannot tell whether the token is
    good (503, never 401)."""

    detail = "the issuer's signing keys (AUTH_JWKS_URL) cannot be fetched: the token cannot be checked now"

    def __init__(self, retry_after: int) -> None:
        super().__init__(self.detail)
        self.retry_after = retry_after
