"""The log line formats, request ids and the logging settings, without a server."""

from __future__ import annotations

import contextvars
import io
import json
import logging
import os
import subprocess
import sys
from typing import Any

import pytest

from orders_service.config import ConfigError, Settings
from orders_service.observability.log_writer import BackgroundLineWriter
from orders_service.observability.logs import (
    REQUEST_ID,
    BrokerConnectionFailures,
    ConsoleFormatter,
    JsonFormatter,
    RequestContextFilter,
)
from orders_service.observability.request_log import RequestLog, request_id_from

# 2026-11-25T21:48:30.398Z
CREATED = 1_795_643_310.398_7


def record(message: str = "hello %s", *args: object, **extra: object) -> logging.LogRecord:
    made = logging.LogRecord("orders_service.test", logging.WARNING, __file__, 1, message, args or ("world",), None)
    made.created = CREATED
    made.__dict__.update(extra)
    return made


def test_a_json_line_has_the_fields_in_utc_with_milliseconds() -> None:
    line = json.loads(JsonFormatter().format(record()))
    assert line == {
        "time": "2026-11-25T21:48:30.398Z",
        "level": "WARNING",
        "logger": "orders_service.test",
        "message": "hello world",
    }


def test_context_fields_are_written_when_set_and_not_empty() -> None:
    line = json.loads(JsonFormatter().format(record(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", request_id="r-1")))
    assert (line["trace_id"], line["request_id"]) == ("4bf92f3577b34da6a3ce929d0e0e4736", "r-1")
    for empty in ("", None):
        assert "trace_id" not in json.loads(JsonFormatter().format(record(trace_id=empty)))


def test_a_value_json_cannot_encode_is_written_as_text() -> None:
    line = json.loads(JsonFormatter().format(record(trace_id=object())))
    assert line["trace_id"].startswith("<object object")


def test_an_exception_is_one_field_of_the_same_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = JsonFormatter().format(failed)
    assert "\n" not in text
    line = json.loads(text)
    assert line["message"] == "failed"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("ValueError: boom")


def test_log_exception_outside_an_except_block_writes_no_empty_traceback() -> None:
    """Libraries do this (aiormq 6 on a connection the broker closed): no ``"exc_info": "NoneType: None"``."""
    captured = logging.LogRecord("x", logging.ERROR, __file__, 1, "closed", (), (None, None, None))
    assert "exc_info" not in json.loads(JsonFormatter().format(captured))
    assert "NoneType" not in ConsoleFormatter().format(captured)


@pytest.mark.parametrize("level", ["INFO", "DEBUG"])
def test_aiormqs_broker_connection_failures_are_debug_and_its_other_lines_keep_their_level(level: str) -> None:
    logger = logging.getLogger("aiormq.connection")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    failures = BrokerConnectionFailures()
    old_level = logger.level
    logger.addHandler(handler)
    logger.addFilter(failures)
    logger.setLevel(level)
    try:
        logger.error("error when creating transport: %r", ConnectionRefusedError(111, "Connect call failed"))
        logger.exception(
            'Unexpected connection close from remote "%s", Connection.Close(reply_code=%r, reply_text=%r)',
            "amqp://guest:******@broker:5672/",
            320,
            "CONNECTION_FORCED - shutdown",
        )
        logger.error("Unexpected frame %r", "frame")
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(failures)
        logger.setLevel(old_level)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    failures_seen = [("DEBUG", "error when"), ("DEBUG", "Unexpected connection")] if level == "DEBUG" else []
    assert [(line["level"], " ".join(line["message"].split()[:2])) for line in lines] == [
        *failures_seen,
        ("ERROR", "Unexpected frame"),
    ]
    assert not [line for line in lines if "exc_info" in line]


def test_the_filter_adds_the_current_request_id() -> None:
    outside = record()
    RequestContextFilter().filter(outside)
    assert not hasattr(outside, "request_id")
    token = REQUEST_ID.set("abc")
    try:
        inside = record()
        assert RequestContextFilter().filter(inside)
    finally:
        REQUEST_ID.reset(token)
    assert json.loads(JsonFormatter().format(inside))["request_id"] == "abc"


def test_a_console_line_is_readable_and_stays_on_one_line() -> None:
    line = ConsoleFormatter().format(record("GET %s", "/a\nb", request_id="r-1", trace_id="t-1", user="alice"))
    assert line == "2026-11-25T21:48:30.398Z WARNING orders_service.test [r-1] GET /a\\nb trace_id=t-1 user=alice"


@pytest.mark.parametrize(
    ("sent", "kept"),
    [
        (b"abc-123", True),
        (b"a b", True),
        (b"x" * 128, True),
        (b"x" * 129, False),
        (b"", False),
        (b"ab\x01", False),
        (b"ab\x7f", False),
        (b"a\tb", False),
        ("abé".encode(), False),
        (None, False),
    ],
)
def test_a_request_id_is_kept_only_when_printable_ascii_up_to_128(sent: bytes | None, kept: bool) -> None:
    request_id = request_id_from(sent)
    if kept:
        assert sent is not None
        assert request_id == sent.decode()
    else:
        assert len(request_id) == 32
        assert int(request_id, 16) >= 0
    assert request_id_from(None) != request_id_from(None)


def test_log_settings_and_their_defaults() -> None:
    defaults = Settings.from_env({})
    assert (defaults.log_level, defaults.log_format, defaults.log_user, defaults.access_log) == (
        "INFO",
        "json",
        False,
        True,
    )
    chosen = Settings.from_env({"LOG_LEVEL": "debug", "LOG_FORMAT": "console", "LOG_USER": "true", "ACCESS_LOG": "0"})
    assert (chosen.log_level, chosen.log_format, chosen.log_user, chosen.access_log) == (
        "DEBUG",
        "console",
        True,
        False,
    )
    assert Settings.from_env(chosen.as_env()) == chosen


@pytest.mark.parametrize(
    ("name", "value"), [("LOG_LEVEL", "loud"), ("LOG_FORMAT", "xml"), ("LOG_USER", "maybe"), ("ACCESS_LOG", "on?")]
)
def test_a_bad_log_setting_is_a_config_error(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_serve_with_a_bad_log_setting_says_one_line_and_exits_2() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orders_service.cli", "serve"],
        env={
            **{k: v for k, v in os.environ.items() if k.startswith("COVERAGE")},
            "PATH": "/usr/bin:/bin",
            "LOG_FORMAT": "xml",
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr == "orders-service: invalid configuration: Invalid enum value 'xml' - at `$.LOG_FORMAT`\n"
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_background_writer_writes_every_line_in_order_by_the_time_it_is_closed() -> None:
    stream = io.StringIO()
    writer = BackgroundLineWriter(stream)
    writer.setFormatter(logging.Formatter("%(message)s"))
    for number in range(2500):
        writer.handle(record("line %d", number))
    writer.close()
    assert stream.getvalue() == "".join(f"line {number}\n" for number in range(2500))
    writer.close()  # dictConfig and logging.shutdown may both close it


def test_the_background_writer_survives_a_closed_stdout() -> None:
    stream = io.StringIO()
    stream.close()
    writer = BackgroundLineWriter(stream)
    writer.handle(record())
    writer.close()


MIDDLEWARE_CONTEXT: contextvars.ContextVar[str | None] = contextvars.ContextVar("middleware_context", default=None)


async def test_the_access_line_is_logged_in_the_context_the_response_started_in() -> None:
    """What a middleware inside sets for the request (OpenTelemetry's span) reaches the access line's filters."""

    async def app_in_a_middleware(scope: Any, receive: Any, send: Any) -> None:
        token = MIDDLEWARE_CONTEXT.set("span-of-this-request")
        try:
            await send({"type": "http.response.start", "status": 204, "headers": []})
            await send({"type": "http.response.body", "body": b""})
        finally:
            MIDDLEWARE_CONTEXT.reset(token)

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request"}

    seen: list[tuple[str | None, str | None]] = []

    def filter_like_the_tracing(record: logging.LogRecord) -> bool:
        seen.append((MIDDLEWARE_CONTEXT.get(), getattr(record, "path", None)))
        return False

    access_logger = logging.getLogger("orders_service.access")
    access_logger.addFilter(filter_like_the_tracing)
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": [(b"x-request-id", b"r-9")]}
    try:
        await RequestLog(Settings.from_env({}))(scope, receive, send, app_in_a_middleware)  # type: ignore[arg-type]
    finally:
        access_logger.removeFilter(filter_like_the_tracing)
    assert seen == [("span-of-this-request", "/x")]
    assert (b"x-request-id", b"r-9") in sent[0]["headers"]
