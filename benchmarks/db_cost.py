"""What one request costs PostgreSQL and the service, for ``docs/scaling.md``.

    uv run python -m benchmarks.db_cost [--duration 10]

A PostgreSQL 15 cluster of its own (the machine's binaries, a temporary data directory, run as
``postgres``) with ``pg_stat_statements`` preloaded; the benchmark's seed; the service, 2 workers,
driven by wrk with the benchmark's ``create`` and ``list`` scripts in turn. Per scenario it prints
the statements per request with their mean execution time, rows and buffers (``pg_stat_statements``),
the CPU of every PostgreSQL process and of the service per request (psutil), and from those the
service cores that one PostgreSQL core feeds.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import pwd
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg

from benchmarks import measure
from benchmarks.seed import seed
from orders_service.config import Settings
from tests.support.database import provisioned_database

PG_BIN = Path("/usr/lib/postgresql/15/bin")


@contextlib.contextmanager
def postgres_with_statements(directory: Path) -> Iterator[tuple[Settings, int]]:
    """A cluster with pg_stat_statements on a free port; yields its superuser's settings and its postmaster's pid."""
    user = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
    as_user = {"user": user.pw_uid, "group": user.pw_gid} if user else {}
    data = directory / "data"
    if user:
        os.chown(directory, user.pw_uid, user.pw_gid)
    subprocess.run(
        [PG_BIN / "initdb", "-U", "postgres", "--auth=trust", "-D", data], check=True, capture_output=True, **as_user
    )  # type: ignore[call-overload]
    port = measure.free_port()
    options = (
        f"-c port={port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={directory} "
        "-c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all -c max_connections=200 "
        "-c shared_buffers=1GB -c jit=off"
    )
    subprocess.run(
        [PG_BIN / "pg_ctl", "-D", data, "-w", "-l", directory / "log", "-o", options, "start"],
        check=True,
        capture_output=True,
        **as_user,
    )  # type: ignore[call-overload]
    try:
        pid = int((data / "postmaster.pid").read_text().split()[0])
        yield Settings(db_host="127.0.0.1", db_port=port, db_user="postgres", db_pass="", db_name="postgres"), pid
    finally:
        subprocess.run(
            [PG_BIN / "pg_ctl", "-D", data, "-m", "fast", "stop"], check=False, capture_output=True, **as_user
        )  # type: ignore[call-overload]


def postgres_cpu(postmaster: int) -> float:
    root = psutil.Process(postmaster)
    total = 0.0
    for process in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):
            times = process.cpu_times()
            total += times.user + times.system
    return total


STATEMENTS = """
SELECT calls, total_exec_time, rows, shared_blks_hit + shared_blks_read, wal_bytes,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 90)
FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = %s) AND calls > 0
ORDER BY total_exec_time DESC LIMIT 8
"""


def run_scenario(
    scenario: str, served: measure.Served, admin: psycopg.Connection, postmaster: int, db_name: str, args: Any
) -> None:
    admin.execute("SELECT pg_stat_statements_reset()")
    pg_before = postgres_cpu(postmaster)
    with measure.usage_of(served.process.pid) as usage:
        summary = measure.wrk(
            served.base_url, f"{scenario}.lua", [], connections=args.connections, seconds=args.duration
        )
    pg_ms = (postgres_cpu(postmaster) - pg_before) * 1000
    requests = summary["requests"]
    service_ms = usage.cpu_seconds * 1000
    print(
        f"\n{scenario}: {requests / summary['duration_s']:.0f} req/s; per request: PostgreSQL "
        f"{pg_ms / requests:.3f} ms CPU, the service {service_ms / requests:.3f} ms CPU; "
        f"one PostgreSQL core feeds {service_ms / pg_ms:.1f} service cores"
    )
    for calls, total_ms, returned, buffers, wal, query in admin.execute(STATEMENTS, [db_name]).fetchall():
        print(
            f"  {calls / requests:5.2f}/req  {total_ms / calls:6.3f} ms  {returned / calls:6.1f} rows  "
            f"{buffers / calls:6.1f} buffers  {int(wal) / calls:7.0f} B WAL  {query}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="orders-dbcost-") as directory,
        postgres_with_statements(Path(directory)) as (server, postmaster),
        provisioned_database(server) as database,
        psycopg.connect(database.admin.conninfo, autocommit=True) as admin,
    ):
        seed(database.admin)
        admin.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        log_dir = Path(directory) / "logs"
        log_dir.mkdir()
        with measure.product(database.runtime, 2, log_dir) as served:
            measure.wrk(served.base_url, "create.lua", [], connections=args.connections, seconds=3)  # warm-up
            for scenario in ("create", "list"):
                run_scenario(scenario, served, admin, postmaster, database.admin.db_name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
