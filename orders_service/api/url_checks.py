"""Checks of a request's URL before its handler runs: one URL per order, query numbers in plain decimal.

Litestar parses an ``int`` path parameter with Python's ``int()``, which also reads ``+1``,
``1_000``, `` 1`` and any Unicode digit (Arabic-Indic, fullwidth), and query integers with msgspec's lax
conversion, which also reads ``1e1`` and ``10.0``; a repeated query parameter silently takes
one of its values. Each of these names the same resource in several ways, which caches, logs
and authorization rules written for one spelling miss.
"""

from __future__ import annotations

import re
from typing import Any

from litestar import Request
from litestar.exceptions import ValidationException

from orders_service.orders.errors import OrderNotFound

ORDER_ID_PARAMETER = "order_id"
# Plain ASCII decimal without leading zeros: the one spelling of a number ("0" is refused later, as below 1).
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_SHOWN_ID_LENGTH = 32


def order_not_found(raw_id: str) -> OrderNotFound:
    shown = raw_id if len(raw_id) <= _SHOWN_ID_LENGTH else raw_id[:_SHOWN_ID_LENGTH] + "…"
    return OrderNotFound(shown)


def require_canonical_order_id(request: Request[Any, Any, Any]) -> None:
    """404, as for a missing order, unless the URL spells the order id the one way it can.

    The id must be plain ASCII decimal, and the raw URL must be the route's own: no
    percent-encoded digit or slash, no trailing or doubled slash (Litestar routes ``/orders/1/``
    and ``/orders//1`` as ``/orders/1``). Ids outside 1..2^53-1 then fail the handler's bounds (400).
    """
    raw_id: str = request.path_params[ORDER_ID_PARAMETER]
    if _DECIMAL.fullmatch(raw_id) is None:
        raise order_not_found(raw_id)
    scope = request.scope
    canonical = scope["path_template"].replace("{order_id}", raw_id).encode()
    # Granian passes the path alone; Litestar's test client appends the query string.
    raw_path = scope.get("raw_path") or scope["path"].encode()
    if not raw_path.partition(b"?")[0].endswith(canonical):
        raise order_not_found(raw_id)


def _query_error(key: str, message: str) -> ValidationException:
    return ValidationException(
        "Validation failed for the request query parameters",
        extra=[{"message": message, "key": key, "source": "query"}],
    )


def require_plain_query(request: Request[Any, Any, Any], *, numbers: tuple[str, ...], texts: tuple[str, ...]) -> None:
    """400 when a parameter of ``numbers`` or ``texts`` is given twice, or a number is not plain ASCII decimal."""
    query = request.query_params
    for key in (*numbers, *texts):
        values = query.getall(key, ())
        if len(values) > 1:
            raise _query_error(key, f"`{key}` given more than once")
        if values and key in numbers and _DECIMAL.fullmatch(values[0]) is None:
            raise _query_error(key, "Expected a whole number in plain decimal digits")
