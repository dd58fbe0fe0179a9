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
