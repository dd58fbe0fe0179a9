"""What a read that a replica serves costs the primary, against the page read on the primary, for ``docs/scaling.md``.

    uv run python -m benchmarks.replica_read_cost [--seconds 10] [--rounds 2]

With ``DB_READ_HOSTS`` the primary still answers one lookup per read (the user's write version and its flushed
WAL position, ``read_routing``). pgbench runs that lookup and the first page of ``GET /orders/me``, each as the
service's own pipeline, in turn, on a database of its own on ``TEST_DATABASE_URL``'s server (the benchmark's
seed, and a write version for every reader).
"""

from __future__ import annotations

import argparse
import os
import shutil

import psycopg
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from benchmarks import ceiling
from benchmarks.seed import READERS, seed
from orders_service.config import Settings
from orders_service.dev import migrate
from orders_service.dev.demo_catalog import create_products_table

DATABASE = "orders_replica_read_cost"


def seeded_settings(server_url: str) -> Settings:
    """A new database on the server of ``server_url``, migrated and seeded; its settings (the server's role)."""
    url = make_url(server_url)
    with psycopg.connect(server_url, autocommit=True) as connection:
        connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")
        connection.execute(f"CREATE DATABASE {DATABASE}")
    settings = Settings.from_env(
        {
            "DB_HOST": url.host or "127.0.0.1",
            "DB_PORT": str(url.port or 5432),
            "DB_USER": url.username or "postgres",
            "DB_PASS": url.password or "",
            "DB_NAME": DATABASE,
        }
    )
    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"CREATE SCHEMA {settings.catalog_schema}")
        create_products_table(connection, settings)
    engine.dispose()
    migrate.upgrade(settings)
    seed(settings)
    with psycopg.connect(settings.conninfo, autocommit=True) as connection:
        connection.execute(
            f"INSERT INTO {settings.db_schema}.user_writes (user_id, version)"
            f" SELECT 'reader-' || n, 1 FROM generate_series(0, {READERS - 1}) AS n"
        )
        connection.execute(f"VACUUM ANALYZE {settings.db_schema}.user_writes")
    return settings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2, help="the lookup and the page in turn this many times")
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    pgbench = shutil.which("pgbench")
    if pgbench is None:
        raise SystemExit("pgbench not found (Debian: postgresql-contrib)")
    server_url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    settings = seeded_settings(server_url)
    try:
        for _ in range(args.rounds):
            for scenario in (ceiling.VERSION_LOOKUP, "list"):
                result = ceiling.run_pgbench(pgbench, settings, scenario, clients=args.clients, seconds=args.seconds)
                print(f"{scenario:15} {result['req_s']:9.0f} tx/s  p50 {result['p50_ms']:.2f} ms", flush=True)
    finally:
        with psycopg.connect(server_url, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {DATABASE}")


if __name__ == "__main__":
    main()
