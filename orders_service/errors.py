"""Domain errors and how every error becomes an RFC 9457 problem-details body.

Every error response has the shape ``{"status", "title", "detail", ...}`` with
``application/problem+json``; domain errors add ``reason`` and ``product_ids``,
validation errors add ``errors: [{"message", "key", "source"}]``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any, Literal

from litestar.exceptions import HTTPException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

RejectionReason = Literal["missing_product", "insufficient_stock", "total_too_large"]

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


def _http_exception(exc: HTTPException) -> ProblemDetailsException:
    extra: dict[str, Any] | None = None
    if isinstance(exc.extra, list) and exc.extra:
        extra = {"errors": exc.extra}
    elif isinstance(exc.extra, dict) and exc.extra:
        extra = exc.extra
    return ProblemDetailsException(
        status_code=exc.status_code,
        title=HTTPStatus(exc.status_code).phrase,
        detail=exc.detail,
        extra=extra,
        headers=exc.headers,
    )


def _database_unavailable(exc: Exception) -> ProblemDetailsException:
    logger.warning("database unavailable: %s", exc)
    return ProblemDetailsException(
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        title="Service Unavailable",
        detail="The database is unavailable or busy; the request did not complete. Retry later.",
        headers={"Retry-After": "1"},
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
                OperationalError: _database_unavailable,
                InterfaceError: _database_unavailable,
                PoolTimeoutError: _database_unavailable,
                Exception: _internal_error,
            }
        )
    )
