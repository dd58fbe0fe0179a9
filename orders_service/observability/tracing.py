"""Whether to trace: OpenTelemetry, on when an OTLP endpoint is set and ``OTEL_SDK_DISABLED`` is not true.

On, each request is a trace (a server span continuing the Gateway's ``traceparent``, a child span
per SQL statement) exported over OTLP/HTTP (``tracing_plugin.py``); everything else comes from the
standard ``OTEL_*`` variables, read by the SDK itself: ``OTEL_EXPORTER_OTLP_*``, ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_PROPAGATORS``.
Off, nothing of OpenTelemetry is loaded, let alone on the request path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def tracing_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """An OTLP endpoint is set and the SDK is not disabled."""
    env = os.environ if environ is None else environ
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(env.get(name, "").strip() for name in ENDPOINT_VARIABLES)
