"""Log records carry the current trace: ``trace_id`` (32 hex digits) and ``span_id`` (16) when a span is active."""

from __future__ import annotations

import logging

from opentelemetry import trace


class TraceIdFilter(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` of the current span to each record; lets every record through.

    On a handler, it runs where the record is made (a ``QueueHandler`` filters before it enqueues),
    so the span is the one of the request that logged.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = trace.format_trace_id(context.trace_id)
            record.span_id = trace.format_span_id(context.span_id)
        return True


def add_trace_ids_to_logs() -> None:
    """Put a TraceIdFilter on the handlers of the root and ``litestar`` loggers (once per handler)."""
    for logger in (logging.getLogger(), logging.getLogger("litestar")):
        for handler in logger.handlers:
            if not any(isinstance(existing, TraceIdFilter) for existing in handler.filters):
                handler.addFilter(TraceIdFilter())
