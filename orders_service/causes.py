"""The closed sets of reasons the service reports: in problem bodies, logs and metric labels."""

from __future__ import annotations

from typing import Literal

RejectionReason = Literal["missing_product", "insufficient_stock", "total_too_large", "quantity_too_large"]
UnavailableCause = Literal[
    "database_unavailable",
    "database_timeout",
    "read_only",
    "lock_timeout",
    "statement_timeout",
    "pool_exhausted",
    "product_busy",
    "queue_full",
    "deadlock",
    "table_missing",
]
# Why AUTH_MODE=jwt refused a request's bearer token (401), and the one reason it could not tell (503).
AuthRefusalReason = Literal[
    "missing",
    "malformed",
    "expired",
    "not_yet_valid",
    "bad_signature",
    "wrong_audience",
    "wrong_issuer",
    "missing_claim",
    "algorithm_not_allowed",
    "unknown_key",
    "lifetime_too_long",
    "bad_user",
]
SIGNING_KEYS_UNAVAILABLE = "signing_keys_unavailable"
