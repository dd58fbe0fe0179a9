"""``HEAD`` wherever ``GET`` is served: the same handler, status and headers, no body.

RFC 9110 section 9.3.2: a server should answer HEAD on every GET resource (load balancers
and monitors probe with it). The handler runs as for GET; Granian (hyper) writes the
response's headers, Content-Length included, and drops the body of a HEAD response.
"""

from __future__ import annotations

from typing import Any

from litestar import HttpMethod, route
from litestar.handlers import HTTPRouteHandler
from litestar.types import Method

HEAD_OPERATION_SUFFIX = "Head"


def get_and_head(path: str | None = None, *, operation_id: str, **kwargs: Any) -> HTTPRouteHandler:
    """Like ``@get(path, operation_id=…)``, also answering HEAD (documented as ``<operation_id>Head``)."""

    def operation_id_for(_handler: HTTPRouteHandler, method: Method, _path: list[Any]) -> str:
        return operation_id if method == HttpMethod.GET else operation_id + HEAD_OPERATION_SUFFIX

    return route(path, http_method=[HttpMethod.GET, HttpMethod.HEAD], operation_id=operation_id_for, **kwargs)
