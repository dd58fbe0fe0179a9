"""Tools of the fault tests: a TCP proxy that can freeze, and a load of clients that retry 503s with their key."""

from __future__ import annotations

import asyncio
import contextlib
import json
import multiprocessing
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any
from urllib.parse import urlsplit

from tests.support.keepalive_http import KeepAliveClient, TransportError

Upstream = str | tuple[str, int]  # a Unix socket's path, or a TCP (host, port)
Command = str | tuple[str, Any]  # what the test sends the relay's process


class FreezableProxy:
    """Relays TCP connections to ``upstream`` (PostgreSQL's Unix socket, RabbitMQ's port); ``freeze()`` stops
    relaying bytes, as a frozen network.

    While frozen, connections stay open and bytes are held (TCP would retransmit them), new
    connections are accepted but not forwarded: no error ever reaches either side. The relay runs
    in a process of its own: in the test's process it would queue for the GIL behind the clients.

    It can also play a slow link (``delay``: every chunk from the upstream reaches the client that much later, in
    order) and a name that moves (``move_to``: new connections go to another upstream; ``cut``: every relayed
    connection is closed, as when the host it reached is gone).
    """

    def __init__(self, upstream: Upstream) -> None:
        context = multiprocessing.get_context("spawn")
        self._control, child_control = context.Pipe()
        self._process = context.Process(
            target=_relay_process, args=(upstream, child_control), daemon=True, name="freezable-proxy"
        )
        self._process.start()
        if not self._control.poll(30):
            raise RuntimeError("the freezable proxy did not start")
        self.port: int = self._control.recv()
        self.upstream: Upstream = upstream

    def _command(self, command: Command) -> None:
        self._control.send(command)
        if self._control.recv() != command:  # acknowledged once the relay's loop has applied it
            raise RuntimeError(f"the freezable proxy did not {command}")

    def freeze(self) -> None:
        self._command("freeze")

    def thaw(self) -> None:
        self._command("thaw")

    def delay(self, milliseconds: float) -> None:
        """On the connections opened from now on, each chunk from the upstream reaches the client ``milliseconds``
        after it arrived (in order; the other direction is not delayed): a distant or busy peer. 0: no delay."""
        self._command(("delay", milliseconds))

    def move_to(self, upstream: Upstream, *, cut: bool = False) -> None:
        """New connections go to ``upstream`` once this returns; ``cut``: close the relayed ones too."""
        self._command(("move", upstream))
        self.upstream = upstream
        if cut:
            self.cut()

    def cut(self) -> None:
        """Close every relayed connection at once (both sides; unsent bytes are dropped), as a host that vanished."""
        self._command("cut")

    def close(self) -> None:
        with contextlib.suppress(OSError, EOFError, RuntimeError):
            self._command("stop")
        self._process.join(10)
        if self._process.is_alive():
            self._process.kill()


def _relay_process(upstream: Upstream, control: Connection) -> None:
    asyncio.run(_relay(upstream, control))


async def _relay(upstream: Upstream, control: Connection) -> None:
    flowing = asyncio.Event()
    flowing.set()
    target = [upstream]  # where new connections go (``move``)
    delay = [0.0]  # seconds added to each chunk from the upstream (``delay``)
    relayed: set[asyncio.StreamWriter] = set()  # both ends of every open connection (``cut``)
    loop = asyncio.get_running_loop()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def delayed_pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """As ``pump``, each chunk written ``delay`` after it was read: reading goes on meanwhile (a latency, not a
        throughput limit), and the end of the stream comes after the last chunk."""
        chunks: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await chunks.get()
                if not data:
                    return
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)  # the link's latency: the fault itself
                await flowing.wait()
                writer.write(data)
                await writer.drain()

        delivering = asyncio.create_task(deliver())
        try:
            while data := await reader.read(65536):
                chunks.put_nowait((loop.time() + delay[0], data))
            chunks.put_nowait((loop.time() + delay[0], b""))
            await delivering
        finally:
            delivering.cancel()
            writer.close()

    async def handle(client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        await flowing.wait()
        destination = target[0]
        try:
            if isinstance(destination, str):
                server_reader, server_writer = await asyncio.open_unix_connection(destination)
            else:
                server_reader, server_writer = await asyncio.open_connection(*destination)
        except OSError:
            client_writer.close()
            return
        relayed.update((client_writer, server_writer))
        downstream = delayed_pump if delay[0] > 0 else pump
        try:
            await asyncio.gather(
                pump(client_reader, server_writer), downstream(server_reader, client_writer), return_exceptions=True
            )
        finally:
            relayed.difference_update((client_writer, server_writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    control.send(server.sockets[0].getsockname()[1])
    while (command := await loop.run_in_executor(None, control.recv)) != "stop":
        match command:
            case "freeze":
                flowing.clear()
            case "thaw":
                flowing.set()
            case ("delay", milliseconds):
                delay[0] = milliseconds / 1000
            case ("move", destination):
                target[0] = destination
            case "cut":
                for writer in list(relayed):
                    writer.transport.abort()
        control.send(command)
    control.send(command)
    server.close()


@contextlib.contextmanager
def freezable_proxy(upstream: Upstream) -> Iterator[FreezableProxy]:
    proxy = FreezableProxy(upstream)
    try:
        yield proxy
    finally:
        proxy.close()


@dataclass
class LoadReport:
    """What the clients saw. Times are ``time.monotonic()``."""

    statuses: Counter[int] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)
    acknowledged: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> the order answered with 200
    cancelled: set[int] = field(default_factory=set)  # orders whose cancellation was answered with 200
    pages: int = 0  # GET /orders/me answered with 200
    answers: list[tuple[float, float, int]] = field(default_factory=list)  # (sent, answered, status)
    order_answers: list[tuple[float, float, int]] = field(default_factory=list)  # the answers to POST /orders only
    reasons: list[tuple[float, float, str]] = field(default_factory=list)  # (sent, answered, reason) of each 503
    unknown_outcome_503s: int = 0

    def slowest(self, since: float, until: float) -> float:
        """The longest wait of a request sent in [since, until]."""
        return max((answered - sent for sent, answered, _ in self.answers if since <= sent <= until), default=0.0)

    def first_success_after(self, moment: float) -> float | None:
        return min(
            (answered for sent, answered, status in self.answers if status == 200 and sent >= moment), default=None
        )

    def last_failure(self) -> float | None:
        return max((answered for _, answered, status in self.answers if status != 200), default=None)

    def summary(self) -> str:
        return (
            f"statuses {dict(sorted(self.statuses.items()))}, transport errors {dict(self.transport_errors)}, "
            f"orders acknowledged {len(self.acknowledged)}, cancelled {len(self.cancelled)}, pages {self.pages}, "
            f"503s with outcome unknown {self.unknown_outcome_503s}"
        )


class OrderLoad:
    """``clients`` clients each placing orders (1-3 products, Idempotency-Key), retrying 503s with the same key.

    After each acknowledged order a client lists its orders, and cancels one order in four
    (retrying 503s: cancelling is idempotent). ``stop()`` ends the load: each client finishes
    what it is on (until it is acknowledged) and stops. So in the end the database must hold
    exactly the acknowledged orders, cancelled exactly when the client cancelled them.
    """

    def __init__(self, base_url: str, *, clients: int, product_ids: list[int], retry_pause: float = 0.05) -> None:
        self.base_url = base_url
        self.clients = clients
        self.product_ids = product_ids
        self.retry_pause = retry_pause
        self.report = LoadReport()
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._random = random.Random(7)

    def start(self) -> None:
        url = urlsplit(self.base_url)
        connections = [KeepAliveClient(url.hostname or "127.0.0.1", url.port or 80) for _ in range(self.clients)]
        self._tasks = [asyncio.create_task(self._run_client(n, http)) for n, http in enumerate(connections)]

    async def stop(self) -> LoadReport:
        self._stopping.set()
        await asyncio.gather(*self._tasks)
        return self.report

    async def _run_client(self, number: int, http: KeepAliveClient) -> None:
        try:
            await self._place_until_stopped(number, http)
        finally:
            await http.close()

    async def _place_until_stopped(self, number: int, http: KeepAliveClient) -> None:
        while not self._stopping.is_set():
            key = f"fault-{number}-{uuid.uuid4().hex[:12]}"
            products = self._random.sample(self.product_ids, self._random.randint(1, 3))
            items = [{"product_id": product, "qty": self._random.randint(1, 3)} for product in products]
            user = f"client-{number}"
            headers = {"X-User": user, "Idempotency-Key": key}
            order = await self._until_answered(http, "POST", "/orders", headers, {"items": items})
            if order is None:
                return
            self.report.acknowledged[key] = {**order, "requested": items}
            if await self._until_answered(http, "GET", "/orders/me?limit=5", {"X-User": user}) is not None:
                self.report.pages += 1
            if self._random.random() < 0.25:
                cancel = f"/orders/{order['id']}/cancel"
                if await self._until_answered(http, "POST", cancel, {"X-User": user}) is not None:
                    self.report.cancelled.add(order["id"])

    async def _until_answered(
        self, http: KeepAliveClient, method: str, path: str, headers: dict[str, str], body: Any = None
    ) -> Any:
        """The JSON of the first 200, retrying 503s (and dropped connections); None on any other status."""
        while True:
            sent = time.monotonic()
            try:
                status, content = await http.request(method, path, headers, body)
            except TransportError as exc:
                self.report.transport_errors[str(exc)] += 1
                await asyncio.sleep(self.retry_pause)  # back off before retrying, as a client would
                continue
            answered = time.monotonic()
            self.report.statuses[status] += 1
            self.report.answers.append((sent, answered, status))
            if method == "POST" and path == "/orders":
                self.report.order_answers.append((sent, answered, status))
            if status == 200:
                return json.loads(content)
            if status != 503:
                return None  # a bug: the test fails on the status count
            problem = json.loads(content)
            self.report.reasons.append((sent, answered, str(problem.get("reason"))))
            if "may or may not" in problem.get("detail", ""):
                self.report.unknown_outcome_503s += 1
            await asyncio.sleep(self.retry_pause)  # back off before retrying, as a client would


async def wait_until(condition: Any, within: float, what: str) -> float:
    """Poll ``condition`` (a blocking callable, run in a thread) until true; return when it became true."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(condition):
            return time.monotonic()
        await asyncio.sleep(0.02)  # polling an outside condition
    raise AssertionError(f"{what} did not happen within {within}s")


async def until_acknowledged(load: OrderLoad, count: int, within: float = 30.0) -> None:
    """Wait until ``count`` more orders are acknowledged (the load is flowing)."""
    target = len(load.report.acknowledged) + count
    await wait_until(lambda: len(load.report.acknowledged) >= target, within, f"{count} acknowledged orders")
