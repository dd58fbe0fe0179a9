"""A real PgBouncer in transaction mode in front of the test database.

Two flavours: the one on PATH (Debian's 1.18 has no prepared-statement support; the service
runs with DB_PREPARED_STATEMENTS=false behind it) and, when ``PGBOUNCER_PREPARED`` names a
build >= 1.21, one with ``max_prepared_statements`` (the service keeps them on). PgBouncer
refuses to run as root, so as root it runs as the ``postgres`` user (or as the owner of the
upstream's socket directory).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from orders_service.config import Settings

PREPARED_ENV = "PGBOUNCER_PREPARED"
STARTUP_TIMEOUT = 20.0


def plain_binary() -> str | None:
    return shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )


def prepared_binary() -> str | None:
    """A PgBouncer that supports protocol-level prepared statements (>= 1.21), if one is configured."""
    for candidate in (os.environ.get(PREPARED_ENV), plain_binary()):
        if candidate and os.access(candidate, os.X_OK) and version(candidate) >= (1, 21):
            return candidate
    return None


def version(binary: str) -> tuple[int, int]:
    output = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False).stdout
    match = re.search(r"PgBouncer (\d+)\.(\d+)", output)
    return (int(match[1]), int(match[2])) if match else (0, 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def pgbouncer(binary: str, upstream: Settings, users: list[Settings], *, prepared: bool) -> Iterator[Settings]:
    """Run PgBouncer (transaction pooling, default ignore_startup_parameters) in front of ``upstream``.

    Yields ``upstream`` with host and port pointing at PgBouncer, and DB_PREPARED_STATEMENTS
    matching the flavour.
    """
    run_as = _unprivileged_user(upstream) if os.geteuid() == 0 else None
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="orders-pgbouncer-") as directory:
        workdir = Path(directory)
        auth = "".join(f'"{user.db_user}" "{user.db_pass}"\n' for user in users)
        (workdir / "users.txt").write_text(auth)
        lines = [
            "[databases]",
            f"* = host={upstream.db_host} port={upstream.db_port}",
            "[pgbouncer]",
            "listen_addr = 127.0.0.1",
            f"listen_port = {port}",
            "unix_socket_dir =",
            "auth_type = trust",
            f"auth_file = {workdir / 'users.txt'}",
            "pool_mode = transaction",
            "max_client_conn = 2000",
            "default_pool_size = 40",
            "server_login_retry = 1",
            f"logfile = {workdir / 'pgbouncer.log'}",
            f"pidfile = {workdir / 'pgbouncer.pid'}",
        ]
        if prepared:
            lines.append("max_prepared_statements = 200")
        (workdir / "pgbouncer.ini").write_text("\n".join(lines) + "\n")
        if run_as is not None:
            for path in (workdir, *workdir.iterdir()):
                os.chown(path, run_as.pw_uid, run_as.pw_gid)
        process = subprocess.Popen(
            [binary, str(workdir / "pgbouncer.ini")],
            user=run_as.pw_uid if run_as else None,
            group=run_as.pw_gid if run_as else None,
            extra_groups=[] if run_as else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_until_listening(process, port, workdir / "pgbouncer.log")
            yield Settings.from_env(
                {
                    **upstream.as_env(),
                    "DB_HOST": "127.0.0.1",
                    "DB_PORT": str(port),
                    "DB_PREPARED_STATEMENTS": "true" if prepared else "false",
                }
            )
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _unprivileged_user(upstream: Settings) -> pwd.struct_passwd:
    """Who runs PgBouncer when we are root: whoever owns a Unix-socket upstream (it may be private), else postgres."""
    if upstream.db_host.startswith("/"):
        return pwd.getpwuid(Path(upstream.db_host).stat().st_uid)
    return pwd.getpwnam("postgres")


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"pgbouncer exited with {process.returncode}: {_read(log)}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)  # polling for startup
    raise RuntimeError(f"pgbouncer did not listen within {STARTUP_TIMEOUT}s: {_read(log)}")


def _read(log: Path) -> str:
    return log.read_text(errors="replace") if log.exists() else "(no log)"
