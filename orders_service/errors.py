"""Domain errors and how every error becomes an RFC 9457 problem-details body.

Every error response has the shape ``{"status", "title", "detail", ...}`` with
``application/problem+json``; domain errors add ``reason`` and ``product_ids``,
validation errors add ``errors: [{"message", "key", "source"}]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from litestar.exceptions import HTTPException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from orders_service import metrics
from orders_service.causes import RejectionReason, UnavailableCause

logger = logging.getLogger(__name__)


class OrderRejected(Exception):
    """The order cannot be placed; nothing was reserved or written."""

    def __init__(self, reason: RejectionReason, product_ids: Sequence[int], detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.product_ids = sorted(product_ids)
        self.detail = detail


class RestockOverflow(Exception):
    """Putting a cancelled order's units back would push a product's stock beyond integer."""

    detail = "cancelling would push a product's stock beyond the largest storable value; nothing was changed"


class DatabaseUnavailable(Exception):
    """The database could not serve the request now (503). ``cause`` names why, for logs, metrics and clients.

    ``outcome_unknown`` is set when the connection was lost after a write was sent: the
    transaction may have committed, so the client must retry with its Idempotency-Key.
    """

    DETAILS: dict[UnavailableCause, str] = {
        "database_unavailable": "The database is unavailable",
        "database_timeout": "The database did not answer in time",
        "lock_timeout": "A product or order was locked by another transaction for too long",
        "statement_timeout": "The database statement took too long",
        "pool_exhausted": "Every database connection of this instance is busy",
        "product_busy": "Too many requests are waiting for the same product",
        "deadlock": "The transaction kept conflicting with other writers",
        "table_missing": "A table the service needs is missing",
    }

    def __init__(self, cause: UnavailableCause, *, outcome_unknown: bool = False, context: str | None = None) -> None:
        self.cause: UnavailableCause = cause
        self.outcome_unknown = outcome_unknown
        self.context = context
        super().__init__(f"{cause}: {context}" if context else cause)

    @property
    def detail(self) -> str:
        detail = self.DETAILS[self.cause]
        if self.context and self.cause == "table_missing":
            detail = f"{detail}: {self.context}"
        if self.outcome_unknown:
            return (
                f"{detail}; the connection was lost while the change was being committed, so it may or may not "
                "have been applied. Retry with the same Idempotency-Key to get the outcome."
            )
        return f"{detail}; the request did not complete and changed nothing. Retry later."


class IdempotencyKeyReused(Exception):
    """The Idempotency-Key was already used by this user for a different order request."""

    detail = "this Idempotency-Key was already used with a different request body; use a new key for a new order"


def _order_rejected(exc: OrderRejected) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=HTTPStatus.BAD_REQUEST,
        title="Order rejected",
        detail=exc.detail,
        extra={"reason": exc.reason, "product_ids": exc.product_ids},
    )


def _idempotency_key_reused(exc: IdempotencyKeyReused) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=HTTPStatus.UNPROCESSABLE_ENTITY, title="Idempotency-Key reused", detail=exc.detail
    )


def _restock_overflow(exc: RestockOverflow) -> ProblemDetailsException:
    return ProblemDetailsException(status_code=HTTPStatus.CONFLICT, title="Cannot restock", detail=exc.detail)


_SOURCE_NAMES = {"body": "body", "header": "headers", "query": "query parameters", "path": "path parameters"}


def _http_exception(exc: HTTPException) -> ProblemDetailsException:
    extra: dict[str, Any] | None = None
    detail = exc.detail
    if isinstance(exc.extra, list) and exc.extra:
        extra = {"errors": exc.extra}
        # Litestar says "Validation failed for POST /orders": say which part of the request, as for bodies.
        sources = sorted(
            {
                str(getattr(error.get("source"), "value", error.get("source")))
                for error in exc.extra
                if isinstance(error, dict)
            }
            - {"None"}
        )
        if sources and detail.startswith("Validation failed for "):
            detail = "Validation failed for the request " + " and ".join(_SOURCE_NAMES.get(s, s) for s in sources)
    elif isinstance(exc.extra, dict) and exc.extra:
        extra = exc.extra
    return ProblemDetailsException(
        status_code=exc.status_code,
        title=HTTPStatus(exc.status_code).phrase,
        detail=detail,
        extra=extra,
        headers=exc.headers,
    )


RETRY_AFTER_SECONDS = "1"


def _database_unavailable(exc: DatabaseUnavailable) -> ProblemDetailsException:
    metrics.SERVICE_UNAVAILABLE_BY_CAUSE[exc.cause].inc()
    logger.warning(
        "503 %s%s%s",
        exc.cause,
        f" ({exc.context})" if exc.context else "",
        ", outcome unknown" if exc.outcome_unknown else "",
    )
    return ProblemDetailsException(
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        title="Service Unavailable",
        detail=exc.detail,
        extra={"reason": exc.cause},
        headers={"Retry-After": RETRY_AFTER_SECONDS},
    )


def _internal_error(_exc: Exception) -> ProblemDetailsException:
    # Litestar's exception logging already recorded the traceback.
    return ProblemDetailsException(
        status_code=HTTPStatus.INTERNAL_SERVER_ERROR,
        title="Internal Server Error",
        detail="An unexpected error occurred; it was logged.",
    )


def problem_details_plugin() -> ProblemDetailsPlugin:
    """Problem details for domain errors, every HTTP error and a lost database."""
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            exception_to_problem_detail_map={
                OrderRejected: _order_rejected,
                IdempotencyKeyReused: _idempotency_key_reused,
                RestockOverflow: _restock_overflow,
                HTTPException: _http_exception,
                DatabaseUnavailable: _database_unavailable,
                Exception: _internal_error,
            }
        )
    )
