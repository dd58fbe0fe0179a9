"""One ``Host`` per HTTP/1.1 request, checked before routing: 400 otherwise (RFC 9112 section 3.2).

Granian hands over a request without ``Host``, or with two, as it came; a proxy in front and the
service could then disagree about which host the request was for. Such a request is answered
400 with problem details before it reaches a route, and counted as unrouted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from orders_service.observability.http_metrics import count_unrouted

if TYPE_CHECKING:
    from litestar.types import HTTPResponseBodyEvent, HTTPResponseStartEvent, HTTPScope, Send

_HOST = b"host"


def host_problem(scope: HTTPScope) -> str | None:
    """Why the request's ``Host`` is not acceptable, or None (HTTP/1.0 may omit it; HTTP/2 has ``:authority``)."""
    if scope.get("http_version") != "1.1":
        return None
    hosts = [value for name, value in scope["headers"] if name == _HOST]
    if len(hosts) > 1:
        return "Host header given more than once"
    # Granian hands over a missing Host as an empty one; empty is no host for an http URI either.
    if not hosts or not hosts[0].strip():
        return "an HTTP/1.1 request needs a Host header naming the service"
    return None


async def refuse(scope: HTTPScope, send: Send, detail: str) -> None:
    body = msgspec.json.encode({"status": 400, "title": "Bad Request", "detail": detail})
    count_unrouted(scope.get("method", ""), 400)
    start: HTTPResponseStartEvent = {
        "type": "http.response.start",
        "status": 400,
        "headers": [(b"content-type", b"application/problem+json")],
    }
    await send(start)
    end: HTTPResponseBodyEvent = {"type": "http.response.body", "body": body, "more_body": False}
    await send(end)
