"""How every error becomes an RFC 9457 problem-details body.

Every error response has the shape ``{"status", "title", "detail", ...}`` with
``application/problem+json``; domain errors add ``reason`` and ``product_ids``,
validation errors add ``errors: [{"message", "key", "source"}]``.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from litestar.exceptions import HTTPException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)

from orders_service.api.request_checks import CLIENT_CLOSED_REQUEST
from orders_service.auth.refusals import SigningKeysUnavailable
from orders_service.causes import SIGNING_KEYS_UNAVAILABLE
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics
from orders_service.orders.errors import IdempotencyKeyReused, OrderNotFound, OrderRejected, RestockOverflow

logger = logging.getLogger(__name__)


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


def _order_not_found(exc: OrderNotFound) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=HTTPStatus.NOT_FOUND, title=HTTPStatus.NOT_FOUND.phrase, detail=exc.detail
    )


def _restock_overflow(exc: RestockOverflow) -> ProblemDetailsException:
    return ProblemDetailsException(status_code=HTTPStatus.CONFLICT, title="Cannot restock", detail=exc.detail)


# Statuses the standard does not name: nginx's, for a request the client abandoned.
_TITLES = {CLIENT_CLOSED_REQUEST: "Client Closed Request"}
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
        title=_TITLES.get(exc.status_code) or HTTPStatus(exc.status_code).phrase,
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


def _signing_keys_unavailable(exc: SigningKeysUnavailable) -> ProblemDetailsException:
    # The fetch that failed was logged once by auth/remote_keys.py; this is counted, not logged per request.
    metrics.AUTH_REFUSALS_BY_REASON[SIGNING_KEYS_UNAVAILABLE].inc()
    return ProblemDetailsException(
        status_code=HTTPStatus.SERVICE_UNAVAILABLE,
        title="Service Unavailable",
        detail=exc.detail,
        extra={"reason": SIGNING_KEYS_UNAVAILABLE},
        headers={"Retry-After": str(exc.retry_after)},
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
                OrderNotFound: _order_not_found,
                HTTPException: _http_exception,
                DatabaseUnavailable: _database_unavailable,
                SigningKeysUnavailable: _signing_keys_unavailable,
                Exception: _internal_error,
            }
        )
    )
