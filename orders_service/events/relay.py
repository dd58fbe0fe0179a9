"""The outbox relay: publishes committed events to RabbitMQ, at least once, one publisher at a time.

Each cycle is a short transaction: claim (or renew) the lease and read the oldest pending events
(``outbox.py``); publish them on a durable topic exchange with publisher confirms; mark published
only what the broker confirmed, in outbox id order. Only the lease holder publishes, so an order's
events leave in the order they were written. Another relay takes over when the holder's lease
expires (``EVENTS_LEASE_TTL_MS``), e.g. because its process died.

The holder wakes on ``NOTIFY`` (sent after the order's commit, ``wake_up.py``) on a direct
connection of its own when ``EVENTS_LISTEN`` is on, in-process when the order was placed in its
own worker, and polls every ``EVENTS_POLL_INTERVAL_MS`` in any case, which is what works behind
PgBouncer. A broker or database fault is counted, logged once, and retried after a bounded
back-off; it never reaches the request path, which only writes the outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections import Counter
from typing import Any, cast
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aio_pika
import aiormq
import psycopg
from aio_pika.abc import AbstractChannel, AbstractConnection, AbstractExchange
from aiormq import spec
from psycopg import sql

from orders_service.config import Settings
from orders_service.db.engine import connect_args, create_engine
from orders_service.db.failure_line import failure_line
from orders_service.db.transactions import StatementFailed, TransactionRunner
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.events.amqp_publish import Unroutable, publish_batch
from orders_service.events.backoff import Backoff
from orders_service.events.cloudevents import CONTENT_TYPE, PendingEvent, encode_event, order_as_of
from orders_service.events.outbox import Claim, Outbox
from orders_service.observability import metrics

logger = logging.getLogger(__name__)

STARTING = "starting"
PUBLISHING = "publishing"
REFUSED = "publishing; the broker refuses some events (retried after a back-off)"
FAILING = "failing (unexpected error)"
STANDBY = "standby"
STANDBYS_BEHIND = "publishing; waiting for the database's standbys to flush the events' orders"
BROKER_UNREACHABLE = "broker unreachable"
DATABASE_UNAVAILABLE = "database unavailable"
TROUBLE = {BROKER_UNREACHABLE, DATABASE_UNAVAILABLE, REFUSED, FAILING, STANDBYS_BEHIND}  # logged as warnings

BROKER_TIMEOUT = 5.0
PERSISTENT = 2  # AMQP delivery mode
STANDBY_POLL = 0.005  # seconds between looks at the standbys' positions while waiting for them


def default_holder() -> str:
    """A name for this relay in the lease table: where it runs, and unique."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Relay:
    def __init__(self, settings: Settings, *, holder: str | None = None) -> None:
        self.settings = settings
        self.state = STARTING
        runner = TransactionRunner(
            create_engine(settings, pool_size=1, pool_timeout=settings.db_pool_timeout),
            settings,
            pool_size=1,
            pool_timeout=settings.db_pool_timeout,
        )
        ttl = settings.events_lease_ttl_ms / 1000
        self.outbox = Outbox(runner, holder or default_holder(), schema=settings.db_schema, lease_ttl_seconds=ttl)
        # A batch is written only while the lease has this long left (fencing: a relay stalled between its
        # claim and its publish, for longer than the lease, must not publish what the next holder publishes).
        self._lease_margin = ttl / 3
        # The holder renews its lease well before it expires.
        self._holder_pause = min(settings.events_poll_interval_ms / 1000, ttl / 3)
        self._standby_pause = settings.events_poll_interval_ms / 1000
        self._linger = settings.events_linger_ms / 1000
        self._last_batch = 0
        self._last_claim = 0.0  # event-loop time the last claim began
        self._wake = asyncio.Event()
        self._armed = asyncio.Event()  # the relay waits: the listener may read NOTIFYs
        self._stopping = asyncio.Event()
        self._backoff = Backoff()
        self._held = False
        self._connection: AbstractConnection | None = None
        self._channel: AbstractChannel | None = None
        self._exchange: AbstractExchange | None = None
        self._listener: asyncio.Task[None] | None = None
        self._unmarked: list[int] = []  # confirmed by the broker, not yet marked published
        self._refused: list[int] = []  # nacked or returned by the broker, not yet deferred
        self._deferred = False  # as of the last claim: events the broker refused are not published yet

    @property
    def holder(self) -> str:
        return self.outbox.holder

    @property
    def holds_lease(self) -> bool:
        """Whether this relay is the one that publishes now."""
        return self._held

    def wake(self) -> None:
        """An event was committed: publish it without waiting for the next poll."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Publish until ``stop()``; then release the lease, so that another relay takes over at once."""
        logger.info("events relay %s: exchange %r", self.holder, self.settings.events_exchange)
        try:
            while not self._stopping.is_set():
                try:
                    await self._cycle()
                except Exception as exc:  # a bug must not end publishing: say so, start afresh after a back-off
                    logger.exception("events relay: unexpected error")
                    metrics.EVENTS_PUBLISH_FAILURES.labels(reason="unexpected").inc()
                    await self._drop_broker()
                    self._set_state(FAILING, _describe(exc))  # what /health says until a batch goes out
                    await self._pause(self._backoff.next())
        finally:
            await self._shutdown()

    async def _cycle(self) -> None:
        exchange = await self._ensure_broker()
        connected = exchange is not None
        self._wake.clear()  # a NOTIFY from now on wakes the next pause
        started = self._last_claim = asyncio.get_running_loop().time()
        try:
            claim = await self.outbox.claim(
                want=connected,
                limit=self.settings.events_batch_size,
                published=self._unmarked,
                refused=self._refused,
                wal_position=self.settings.events_await_standbys > 0,
            )
            self._unmarked, self._refused = [], []
        except (DatabaseUnavailable, StatementFailed) as exc:
            self._set_state(DATABASE_UNAVAILABLE, failure_line(self.settings, exc))
            await self._pause(self._backoff.next())
            return
        metrics.EVENTS_PENDING.set(claim.pending)
        metrics.EVENTS_OLDEST_PENDING_AGE.set(claim.oldest_age)
        if exchange is None:
            await self._pause(self._backoff.next())
            return
        self._set_held(claim.held)
        if not claim.held:
            self._backoff.reset()
            await self._pause(self._standby_pause)
            return
        batch = claim.batch
        self._last_batch = len(batch)
        self._deferred = claim.deferred
        if not batch and self.state in {REFUSED, FAILING}:
            self._settle_state(refused=False)  # nothing left that fails, unless refused events wait
        if batch and not await self._send_batch(exchange, claim, started + claim.lease_left - self._lease_margin):
            return  # no pause: more are waiting, or what failed paused already
        self._backoff.reset()
        await self._pause(self._holder_pause)

    async def _send_batch(self, exchange: AbstractExchange, claim: Claim, deadline: float) -> bool:
        """Publish the claimed batch before ``deadline``; whether the relay may pause now (False: go on at once)."""
        if asyncio.get_running_loop().time() >= deadline:  # stalled since the claim (a frozen process, a long GC)
            logger.warning(
                "events relay %s: too little of its lease left to publish; its events are left to the holder",
                self.holder,
            )
            return False
        if claim.wal_position is not None and not await self._standbys_flushed(claim.wal_position, deadline):
            return False  # not published: the next claim takes them again
        if not await self._publish(exchange, claim.batch, deadline):
            return False
        if len(claim.batch) == self.settings.events_batch_size:
            return False  # more are waiting: no pause, the next claim marks them
        # Marked now rather than with the next claim, a linger later: published_at is when the broker took them.
        await self._flush_marks()
        return True

    async def _standbys_flushed(self, wal_position: str, deadline: float) -> bool:
        """Whether ``EVENTS_AWAIT_STANDBYS`` standbys flushed the WAL up to ``wal_position`` (the claimed events'
        commits) before ``deadline``.

        With asynchronous standbys a failover loses the primary's last commits: an event published
        before a standby had its order would describe an order the promoted database never had, and
        its id, handed out again, another order. Flushed by the standbys, the commit survives a
        promotion. With synchronous replication it is flushed before the commit returns: no wait.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        wanted = self.settings.events_await_standbys
        while True:
            try:
                flushed, hidden = await self.outbox.standbys_flushed(wal_position)
            except (DatabaseUnavailable, StatementFailed) as exc:
                self._set_state(DATABASE_UNAVAILABLE, failure_line(self.settings, exc))
                return False
            if flushed >= wanted:
                metrics.EVENTS_STANDBY_WAIT.observe(loop.time() - started)
                if self.state == STANDBYS_BEHIND:
                    self._set_state(PUBLISHING)
                return True
            if loop.time() + STANDBY_POLL >= deadline:
                hint = f"; {hidden} hide their position: GRANT pg_read_all_stats (print-grants)" if hidden else ""
                self._set_state(STANDBYS_BEHIND, f"{flushed} of {wanted} have flushed them{hint}")
                return False
            await asyncio.sleep(STANDBY_POLL)  # the standbys report each flush at once: a short pause between looks

    async def _publish(self, exchange: AbstractExchange, batch: list[PendingEvent], deadline: float) -> bool:
        """Publish ``batch`` before ``deadline`` (event-loop time); what the broker confirmed is marked next
        (``_unmarked``), what it refused is tried again after a back-off (``_refused``). False after a fault
        of the connection (then nothing unconfirmed is deferred: it goes out again once the broker is back)."""
        source = self.settings.events_source
        sendable: list[tuple[PendingEvent, bytes, spec.Basic.Properties]] = []
        orphans: list[int] = []
        for event in batch:
            order = order_as_of(event)
            if order is None:  # deleted by hand: nothing left to say about it
                logger.warning("events relay: order %d of event %s no longer exists", event.order_id, event.event_id)
                orphans.append(event.outbox_id)
                continue
            properties = spec.Basic.Properties(
                content_type=CONTENT_TYPE,
                delivery_mode=PERSISTENT,
                message_id=str(event.event_id),
                message_type=event.type,
                timestamp=event.occurred_at,
            )
            sendable.append((event, encode_event(event, order, source), properties))
        outgoing = [(event.type, body, properties) for event, body, properties in sendable]
        try:
            assert self._channel is not None  # noqa: S101 - set with the exchange
            channel = cast("aiormq.Channel", await self._channel.get_underlay_channel())
            results: list[BaseException | None] = await publish_batch(channel, exchange.name, outgoing, deadline)
        # Closed under us (the broker went away, or closed the channel while the claim ran): aiormq raises
        # ChannelInvalidStateError, a RuntimeError, for a channel that is no longer open.
        except (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError) as exc:
            results = [exc] * len(outgoing)
        failure: BaseException | None = None
        refusals: Counter[str] = Counter()
        for (event, _, _), result in zip(sendable, results, strict=True):
            if result is None:
                self._unmarked.append(event.outbox_id)
                metrics.EVENTS_PUBLISHED.labels(type=event.type).inc()
            elif isinstance(result, Unroutable | aiormq.exceptions.DeliveryError):
                self._refused.append(event.outbox_id)
                refusals["unroutable" if isinstance(result, Unroutable) else "nacked"] += 1
            else:
                failure = result
        self._unmarked += orphans
        self._report_refusals(refusals)
        if failure is not None:
            reason = "timeout" if isinstance(failure, TimeoutError) else "unreachable"
            metrics.EVENTS_PUBLISH_FAILURES.labels(reason=reason).inc()
            self._set_state(BROKER_UNREACHABLE, _describe(failure))
            await self._drop_broker()
            await self._pause(self._backoff.next())
            return False
        return True

    def _report_refusals(self, refusals: Counter[str]) -> None:
        """Count the events the broker refused; say so once when it starts, and once when it stops."""
        for reason, count in refusals.items():
            metrics.EVENTS_PUBLISH_FAILURES.labels(reason=reason).inc(count)
        what = ", ".join(f"{count} {reason}" for reason, count in sorted(refusals.items()))
        self._settle_state(refused=bool(refusals), detail=f"{what}; see orders_events_publish_failures_total")

    def _settle_state(self, *, refused: bool, detail: str = "") -> None:
        """``REFUSED`` for as long as refused events remain (this batch's, or others waiting out their back-off),
        not only for the cycles that try them: one WARNING line when it starts, one INFO line when it ends."""
        if refused or (self._deferred and self.state in {REFUSED, PUBLISHING}):
            if self.state != REFUSED:
                self._set_state(
                    REFUSED, detail or "events wait out a back-off; see orders_events_publish_failures_total"
                )
        elif self.state in {REFUSED, FAILING}:
            self._set_state(PUBLISHING)

    async def _ensure_broker(self) -> AbstractExchange | None:
        """The declared exchange on a live connection, connecting when needed; None (logged) when that fails."""
        if (
            self._exchange is not None
            and self._connection is not None
            and self._channel is not None
            and not self._connection.is_closed
            and not self._channel.is_closed
        ):
            return self._exchange
        await self._drop_broker()
        try:
            async with asyncio.timeout(BROKER_TIMEOUT):
                self._connection = await aio_pika.connect(
                    named_connection(self.settings.amqp_url, self.holder), timeout=BROKER_TIMEOUT
                )
                self._connection.close_callbacks.add(self._on_broker_closed)
                self._channel = await self._connection.channel(publisher_confirms=True)
                self._exchange = await self._channel.declare_exchange(
                    self.settings.events_exchange, aio_pika.ExchangeType.TOPIC, durable=True
                )
        except Exception as exc:  # noqa: BLE001 - any failure to connect is "unreachable"; retried after a back-off
            metrics.EVENTS_PUBLISH_FAILURES.labels(reason="unreachable").inc()
            self._set_state(BROKER_UNREACHABLE, _describe(exc))
            await self._drop_broker()
            return None
        return self._exchange

    def _on_broker_closed(self, connection: AbstractConnection | None, exc: BaseException | None) -> None:
        """The broker closed the connection, or it broke: say so now, in the relay's one WARNING line.

        ``_drop_broker`` forgets a connection before closing it, so a close of our own is not reported.
        """
        if connection is self._connection:
            metrics.EVENTS_PUBLISH_FAILURES.labels(reason="unreachable").inc()
            self._set_state(BROKER_UNREACHABLE, f"connection lost: {_describe(exc)}" if exc else "connection lost")

    async def _flush_marks(self) -> None:
        """Mark what the broker confirmed and defer what it refused; on a database fault they stay for the next
        claim. Fenced: once the lease has lapsed, nothing is marked (the next holder publishes it again)."""
        if not self._unmarked and not self._refused:
            return
        try:
            await self.outbox.settle(self._unmarked, self._refused)
        except (DatabaseUnavailable, StatementFailed) as exc:
            self._set_state(DATABASE_UNAVAILABLE, failure_line(self.settings, exc))
            return
        self._unmarked, self._refused = [], []

    async def _drop_broker(self) -> None:
        """Forget the broker connection, and the lease with it: a relay that cannot publish lets another one."""
        await self._flush_marks()
        if self._held:
            self._set_held(False)
            await self._release()
        connection, self._connection, self._channel, self._exchange = self._connection, None, None, None
        if connection is not None:
            # Bounded: a broker that is going away may never answer the close.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(BROKER_TIMEOUT):
                    await connection.close()

    def _set_held(self, held: bool) -> None:
        if held and not self._held and self.settings.events_listen:
            self._listener = asyncio.create_task(self._listen(), name="outbox-listener")
        elif not held:
            self._stop_listener()
        self._held = held
        if not (held and self.state in {REFUSED, FAILING, STANDBYS_BEHIND}):  # those end with a batch that goes out
            self._set_state(PUBLISHING if held else STANDBY)

    async def _release(self) -> None:
        with contextlib.suppress(DatabaseUnavailable, StatementFailed):
            await self.outbox.release()

    def _stop_listener(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            self._listener = None

    async def _listen(self) -> None:
        """Wake the relay on every NOTIFY of the outbox's channel (holder only). Faults: reconnect after a back-off."""
        backoff = Backoff()
        arguments: dict[str, Any] = {**connect_args(self.settings), "application_name": "orders-service-relay"}
        arguments.pop("prepare_threshold", None)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.settings.conninfo, autocommit=True, **arguments
                ) as connection:
                    await connection.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.settings.outbox_channel)))
                    backoff.reset()
                    self._wake.set()  # what was committed before LISTEN: read it now
                    while True:
                        # Read only while the relay waits: NOTIFYs that arrive while it publishes stay in the
                        # socket and cost one read at the next pause, not one each (measured: 0.03 ms of CPU
                        # per order at 1,000 orders/s).
                        await self._armed.wait()
                        async for _ in connection.notifies(stop_after=1):
                            pass
                        self._wake.set()
                        self._armed.clear()
            except psycopg.Error as exc:
                logger.info("events relay: LISTEN connection failed (%s); polling meanwhile", _describe(exc))
            await asyncio.sleep(backoff.next())  # the poll keeps publishing meanwhile

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less when woken (a NOTIFY, ``stop()``).

        Woken by a NOTIFY under load (the last batch held more than one event), it lingers until
        ``EVENTS_LINGER_MS`` after the last claim began, so that the orders committed meanwhile go in
        the same batch: a cycle costs about as much as a hundred events (measured: 0.18 -> 0.05 ms of
        CPU per order at 1,000 orders/s with 20 -> 100 ms). Counted from the claim, not from the wake:
        the events that waited for the last cycle to finish do not wait a full linger on top (claims
        at most every ``EVENTS_LINGER_MS`` under load). An event after a quiet spell leaves at once.
        """
        self._armed.set()
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
                self._armed.clear()
                linger = self._last_claim + self._linger - loop.time()
                if linger > 0 and self._last_batch > 1 and not self._stopping.is_set():
                    await asyncio.sleep(linger)
        except TimeoutError:
            pass
        finally:
            self._armed.clear()

    def _set_state(self, state: str, detail: str = "") -> None:
        if state != self.state:
            level = logging.WARNING if state in TROUBLE else logging.INFO
            logger.log(level, "events relay %s: %s%s", self.holder, state, f" ({detail})" if detail else "")
            self.state = state

    async def _shutdown(self) -> None:
        await self._drop_broker()
        self._stop_listener()
        await self.outbox.runner.engine.dispose()
        logger.info("events relay %s stopped", self.holder)


def named_connection(amqp_url: str, name: str) -> str:
    """``amqp_url`` with ``?name=``: the connection's name in RabbitMQ (``rabbitmqctl``, the management UI).

    aio-pika ignores ``client_properties`` when given a URL; aiormq reads the name from its query.
    A name already in ``AMQP_URL`` stays.
    """
    parts = urlsplit(amqp_url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "name" for key, _ in query):
        return amqp_url
    return urlunsplit(parts._replace(query=urlencode([*query, ("name", name)])))


def _describe(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
