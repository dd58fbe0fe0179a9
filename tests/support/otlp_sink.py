"""A stand-in OTLP/HTTP collector: answers 200 to ``POST /v1/traces`` and keeps the bodies (protobuf)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRACES_PATH = "/v1/traces"


class OTLPSink(ThreadingHTTPServer):
    def __init__(self, *, keep: bool) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.keep = keep
        self.bodies: list[bytes] = []
        self.requests = 0

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: OTLPSink
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector does

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        if self.path != TRACES_PATH:
            self.send_response(404)
        else:
            self.server.requests += 1
            if self.server.keep:
                self.server.bodies.append(body)
            self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")  # an empty ExportTraceServiceResponse: all accepted
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def otlp_sink(*, keep: bool = False) -> Iterator[OTLPSink]:
    """A sink on a free port of 127.0.0.1, served from a thread until the block ends."""
    sink = OTLPSink(keep=keep)
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
        thread.join()
