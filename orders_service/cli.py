"""``orders-service``: ``serve`` (production, Granian), ``dev`` (one-command local run), ``relay`` (the events
relay on its own), ``print-grants``, ``purge-idempotency-keys``, ``purge-events``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import logging
import os
import shlex
import shutil
import socket
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from orders_service.config import ConfigError, Settings
from orders_service.db.grants import AUDIENCES
from orders_service.lifecycle.leaving import LEAVING_FLAG_ENV
from orders_service.observability import logs

logger = logging.getLogger("orders_service")

APP_TARGET = "orders_service.app:app"
DB_ENV_VARS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASS")
DEV_DATA_DIR = Path(".devdb") / "pgdata"
MIN_KEY_RETENTION_HOURS = 24


@contextlib.contextmanager
def metrics_directory() -> Iterator[Path]:
    """An empty directory for prometheus_client's multiprocess mode, set before any worker imports it.

    ``PROMETHEUS_MULTIPROC_DIR`` when the operator configured one (emptied of a previous run's
    files, kept afterwards); otherwise a new temporary directory, removed when serving ends.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        directory = Path(configured)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        yield directory
        return
    directory = Path(tempfile.mkdtemp(prefix="orders-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    try:
        yield directory
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
        shutil.rmtree(directory, ignore_errors=True)


def listen_address(host: str) -> str:
    """``LISTEN_HOST`` as the IP address Granian binds: an address as is, a host name resolved (IPv4 first)."""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"invalid configuration: LISTEN_HOST {host!r} is neither an IP address nor a host name that resolves "
            f"({reason})"
        ) from None
    infos.sort(key=lambda info: info[0] != socket.AF_INET)
    return str(infos[0][4][0])


def serve(settings: Settings) -> None:
    """Serve the app with Granian: ASGI, uvloop, ``WORKERS`` processes, graceful on SIGTERM."""
    from granian.constants import Interfaces, Loops  # noqa: PLC0415 - keep `--help` fast
    from granian.http import HTTP1Settings  # noqa: PLC0415
    from granian.log import LogLevels  # noqa: PLC0415

    from orders_service.db.startup_check import check_database_at_start  # noqa: PLC0415
    from orders_service.lifecycle.connection_limits import (  # noqa: PLC0415
        connections_per_worker,
        raise_open_files_limit,
    )
    from orders_service.lifecycle.graceful_server import GracefulServer  # noqa: PLC0415

    address = listen_address(settings.listen_host)
    max_connections = connections_per_worker(settings, raise_open_files_limit())
    check_database_at_start(settings)
    with metrics_directory(), tempfile.TemporaryDirectory(prefix="orders-service-") as runtime_dir:
        os.environ.update(settings.as_env())  # the workers build their app from the environment
        leaving_flag = Path(runtime_dir) / "leaving"
        os.environ[LEAVING_FLAG_ENV] = str(leaving_flag)
        GracefulServer(
            APP_TARGET,
            grace=settings.shutdown_grace_seconds,
            leaving_flag=leaving_flag,
            address=address,
            port=settings.listen_port,
            interface=Interfaces.ASGI,
            workers=settings.workers,
            loop=Loops.uvloop,
            workers_kill_timeout=settings.worker_kill_timeout,
            respawn_failed_workers=True,
            backlog=settings.http_backlog,
            backpressure=max_connections,  # per worker, idle keep-alive connections included
            http1_settings=HTTP1Settings(header_read_timeout=int(settings.http_idle_timeout * 1000)),
            # Granian's lines in the service's format; a worker's app then logs through its own queue.
            log_dictconfig=logs.process_config(settings),
            log_level=LogLevels(settings.log_level.lower()),
            log_access=False,
        ).serve()


def dev() -> None:
    """Run locally: embedded PostgreSQL unless ``DB_*`` is set, demo catalog, migrations, then serve."""
    if any(name in os.environ for name in DB_ENV_VARS):
        serve_with_demo_catalog(Settings.from_env())
        return
    from orders_service.dev.embedded_postgres import embedded_postgres  # noqa: PLC0415

    logger.info("no DB_* variables set: starting the embedded PostgreSQL in %s", DEV_DATA_DIR)
    with embedded_postgres(DEV_DATA_DIR.resolve()) as db_env:
        os.environ.update(db_env)
        logger.info(
            "while this runs, other commands (alembic, purge-events, ...) reach its database with: %s",
            " ".join(f"{name}={shlex.quote(db_env[name])}" for name in DB_ENV_VARS),
        )
        serve_with_demo_catalog(Settings.from_env())


def serve_with_demo_catalog(settings: Settings) -> None:
    """Create the demo catalog if there is none, apply the migrations, serve."""
    from sqlalchemy import create_engine  # noqa: PLC0415

    from orders_service.dev import migrate  # noqa: PLC0415
    from orders_service.dev.demo_catalog import ensure_demo_catalog  # noqa: PLC0415

    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        if ensure_demo_catalog(connection, settings):
            logger.info("created %s.products with demo products", settings.catalog_schema)
    engine.dispose()
    migrate.upgrade(settings)
    serve(settings)


def purge_idempotency_keys(settings: Settings, older_than_hours: int) -> int:
    """Delete idempotency keys older than ``older_than_hours`` (at least 24); orders stay. Returns the count."""
    from orders_service.orders.idempotency_keys import purge_keys_older_than  # noqa: PLC0415

    return asyncio.run(purge_keys_older_than(settings, older_than_hours))


def purge_events(settings: Settings, older_than_hours: int) -> int:
    """Delete events published over ``older_than_hours`` ago, in batches; pending events stay. Returns the count."""
    from orders_service.events.outbox import purge_events_older_than  # noqa: PLC0415

    return asyncio.run(purge_events_older_than(settings, older_than_hours))


def relay(settings: Settings) -> int:
    """Run the events relay on its own until SIGTERM or SIGINT (deployments that scale it apart from ``serve``)."""
    import signal  # noqa: PLC0415

    from orders_service.events.relay import Relay  # noqa: PLC0415

    if not settings.amqp_url:
        print("orders-service: the relay needs AMQP_URL", file=sys.stderr)
        return 2

    async def run() -> None:
        events_relay = Relay(settings)
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, events_relay.stop)
        await events_relay.run()

    asyncio.run(run())
    return 0


def hours(value: str) -> int:
    """``purge-events --older-than-hours``: a whole number of hours, at least 1."""
    try:
        parsed = int(value)
    except ValueError:
        parsed = 0
    if parsed < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of hours, at least 1, got {value!r}")
    return parsed


def retention_hours(value: str) -> int:
    """``--older-than-hours``: a whole number of hours, at least 24."""
    expected = f"expected a whole number of hours, at least {MIN_KEY_RETENTION_HOURS}"
    try:
        hours = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{expected}, got {value!r}") from None
    if hours < MIN_KEY_RETENTION_HOURS:
        raise argparse.ArgumentTypeError(f"{expected} (keys are kept at least that long), got {hours}")
    return hours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orders-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve with Granian (production; configured by environment variables)")
    commands.add_parser("dev", help="run locally on an embedded PostgreSQL unless DB_* is set")
    grants = commands.add_parser(
        "print-grants", help="print the SQL that gives the runtime role its privileges (DB_SCHEMA, CATALOG_SCHEMA)"
    )
    grants.add_argument("role", help="the role the service connects as (DB_USER)")
    grants.add_argument(
        "--for",
        dest="audience",
        choices=AUDIENCES,
        default=None,
        help="print only the part this role runs (default: all three, each under a header comment)",
    )
    purge = commands.add_parser("purge-idempotency-keys", help="delete old idempotency keys (orders stay)")
    purge.add_argument(
        "--older-than-hours", type=retention_hours, default=MIN_KEY_RETENTION_HOURS, help="default and minimum: 24"
    )
    commands.add_parser("relay", help="publish the outbox's events to RabbitMQ (AMQP_URL), until SIGTERM")
    purge_events_parser = commands.add_parser(
        "purge-events", help="delete events published longer ago than the retention (pending events stay)"
    )
    purge_events_parser.add_argument(
        "--older-than-hours", type=hours, default=None, help="default: EVENTS_RETENTION_HOURS (168)"
    )
    args = parser.parse_args(argv)
    if args.command == "dev":
        os.environ.setdefault("LOG_FORMAT", "console")
    try:
        settings = Settings.from_env()
        logs.configure_process(settings)
        return run(args, settings)
    except ConfigError as exc:
        print(f"orders-service: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from orders_service.db.failure_line import DATABASE_ERRORS, failure_line  # noqa: PLC0415

        if not isinstance(exc, DATABASE_ERRORS):
            raise
        # Read again: `dev` may have pointed DB_* at its embedded PostgreSQL meanwhile.
        print(f"orders-service: {failure_line(Settings.from_env(), exc)}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the command of ``args``; its exit status."""
    if args.command == "serve":
        serve(settings)
    elif args.command == "dev":
        dev()
    elif args.command == "print-grants":
        from orders_service.db.grants import grants_sql  # noqa: PLC0415

        print(grants_sql(settings, args.role, args.audience), end="")
    elif args.command == "relay":
        return relay(settings)
    elif args.command == "purge-events":
        older_than = args.older_than_hours or settings.events_retention_hours
        deleted = purge_events(settings, older_than)
        print(f"deleted {deleted} published event(s) older than {older_than} hours")
    else:
        deleted = purge_idempotency_keys(settings, args.older_than_hours)
        print(f"deleted {deleted} idempotency key(s) older than {args.older_than_hours} hours")
    return 0


if __name__ == "__main__":
    sys.exit(main())
