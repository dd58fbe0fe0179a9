"""Send an HTTP/1.1 request byte for byte: header values that httpx (or Litestar's test client) would refuse,
re-encode or fold still reach the server as a Gateway sent them; broken framing, bodies cut short, stalled,
abandoned."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    base_url: str,
    method: str,
    path: str,
    headers: list[tuple[bytes, bytes]],
    body: bytes = b"",
    *,
    content_length: bool = True,
) -> RawResponse:
    """``content_length=False``: send exactly ``headers``, no Content-Length of our own."""
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}:{port}".encode(), b"Connection: close"]
    lines += [name + b": " + value for name, value in headers]
    if content_length and (body or method in {"POST", "PUT"}):
        lines.append(f"Content-Length: {len(body)}".encode())
    request = b"\r\n".join(lines) + b"\r\n\r\n" + body
    response = parse_response(exchange(base_url, request))
    assert response is not None, "the server closed the connection without answering"
    return response


def connect(base_url: str, timeout: float = 30) -> socket.socket:
    url = urlsplit(base_url)
    return socket.create_connection((url.hostname or "127.0.0.1", url.port or 80), timeout=timeout)


def read_until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (b"" when it closed without a word)."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass  # closed with unread bytes of ours pending: what it sent before is kept
    return b"".join(chunks)


def exchange(base_url: str, message: bytes, timeout: float = 30) -> bytes:
    """Send ``message`` exactly, then read until the server closes the connection."""
    with connect(base_url, timeout) as sock:
        sock.sendall(message)
        return read_until_closed(sock)


def abandon(base_url: str, message: bytes) -> None:
    """Send ``message`` (a request cut short) and leave: close the connection without reading."""
    with connect(base_url) as sock:
        sock.sendall(message)


def parse_response(raw: bytes) -> RawResponse | None:
    """The first response in ``raw``; None when it is empty (the server closed without answering)."""
    if not raw:
        return None
    head, _, payload = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = dict(line.split(": ", 1) for line in header_lines)
    parsed = {name.lower(): value for name, value in parsed.items()}
    if parsed.get("transfer-encoding") == "chunked":
        payload = _dechunk(payload)
    return RawResponse(int(status_line.split()[1]), parsed, payload)


def _dechunk(payload: bytes) -> bytes:
    out = b""
    while payload:
        size_line, _, rest = payload.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            break
        out += rest[:size]
        payload = rest[size + 2 :]
    return out
