"""Each HTTP request's id (``X-Request-ID``, on every response) and its access log line.

``RequestLog`` wraps the whole app, not a route: route middleware never sees a request that
matches no route (404, 405), and those need an id and a line too. The id is set in a context
variable for the whole request, so every line logged while handling it carries it
(``orders_service.observability.logs.RequestContextFilter``).
"""

from __future__ import annotations

import contextvars
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from orders_service.config import Settings
from orders_service.observability.logs import ACCESS_LOGGER, REQUEST_ID

if TYPE_CHECKING:
    from litestar.types import HTTPScope, Message, Receive, Send

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
_REQUEST_ID = REQUEST_ID_HEADER.lower().encode()
_USER = b"x-user"
_VALID_REQUEST_ID = re.compile(rb"[\x20-\x7e]{1,%d}" % MAX_REQUEST_ID_LENGTH)
# Bounds on what a client controls in a line: the raw path of an unrouted request, the method, the user.
MAX_LOGGED_PATH = 256
MAX_LOGGED_METHOD = 16
MAX_LOGGED_USER = 255
# Routine machine traffic, answered fine: at DEBUG, not to drown the requests in probes and scrapes.
QUIET_PATHS = frozenset({"/metrics", "/health", "/health/live"})
QUIET_BELOW_STATUS = 400
ACCESS_MESSAGE = "%s %s %d %.1fms"

HTTPApp = Callable[["HTTPScope", "Receive", "Send"], Awaitable[None]]


def request_id_from(value: bytes | None) -> str:
    """The client's request id when it is 1 to 128 printable ASCII characters, else a new one."""
    if value is not None and _VALID_REQUEST_ID.fullmatch(value):
        return value.decode("ascii")
    return os.urandom(16).hex()  # as unique as a uuid4, a fifth of its cost


class RequestLog:
    """Gives each request its id, returns it on the response, and logs one access line (``ACCESS_LOG``)."""

    __slots__ = ("_access_log", "_log_user", "_logger", "_user_header")

    def __init__(self, settings: Settings) -> None:
        self._access_log = settings.access_log
        self._log_user = settings.log_user
        # AUTH_MODE=jwt: the user the token named (X-User is anyone's to write), once the guard has run.
        self._user_header = _USER if settings.auth_mode == "x-user" else None
        self._logger = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: HTTPScope, receive: Receive, send: Send, app: HTTPApp) -> None:
        started = time.perf_counter()
        sent_id: bytes | None = None
        user: bytes | None = None
        for name, value in scope["headers"]:
            if name == _REQUEST_ID and sent_id is None:
                sent_id = value
            elif name == self._user_header:
                user = value
        request_id = request_id_from(sent_id)
        id_header = (_REQUEST_ID, request_id.encode("ascii"))
        status = 500  # when the app fails without answering
        answering: contextvars.Context | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status, answering
            if message["type"] == "http.response.start":
                status = message["status"]
                answering = contextvars.copy_context()
                # A copy: the app may reuse its message.
                message = {**message, "headers": [*message.get("headers", ()), id_header]}
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await app(scope, receive, send_with_id)
        finally:
            if self._access_log:
                seconds = time.perf_counter() - started
                if self._user_header is None and self._log_user:
                    user = _verified_user(scope)
                user = user if self._log_user else None
                # Logged as from where the response started: inside the middleware the app runs in
                # (e.g. OpenTelemetry's, whose span a filter turns into the line's trace_id).
                if answering is None:
                    self._log(scope, status, seconds, user)
                else:
                    answering.run(self._log, scope, status, seconds, user)
            REQUEST_ID.reset(token)

    def _log(self, scope: HTTPScope, status: int, seconds: float, user: bytes | None) -> None:
        path = scope.get("path_template") or scope["path"][:MAX_LOGGED_PATH]
        level = logging.DEBUG if path in QUIET_PATHS and status < QUIET_BELOW_STATUS else logging.INFO
        if not self._logger.isEnabledFor(level):
            return
        method = scope["method"][:MAX_LOGGED_METHOD]
        duration_ms = round(seconds * 1000, 3)
        fields: dict[str, object] = {"method": method, "path": path, "status": status, "duration_ms": duration_ms}
        if user is not None:
            fields["user"] = user.decode("utf-8", "replace").strip(" \t")[:MAX_LOGGED_USER]
        # makeRecord and handle: what logger.info does, without looking up the caller's frame.
        logger = self._logger
        args = (method, path, status, duration_ms)
        logger.handle(logger.makeRecord(logger.name, level, __file__, 0, ACCESS_MESSAGE, args, None, None, fields))


def _verified_user(scope: HTTPScope) -> bytes | None:
    """The id of the user the guard put on the request, if it did."""
    user_id = getattr(scope.get("user"), "id", None)
    return user_id.encode() if isinstance(user_id, str) else None
