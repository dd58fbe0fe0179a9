"""``orders-service``: ``serve`` (production, Granian), ``dev`` (one-command local run), ``purge-idempotency-keys``."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from orders_service.config import ConfigError, Settings

logger = logging.getLogger("orders_service")

APP_TARGET = "orders_service.app:app"
DB_ENV_VARS = ("DB_HOST", "DB_PORT", "DB_NAME", "DB_USER", "DB_PASS")
DEV_DATA_DIR = Path(".devdb") / "pgdata"
MIN_KEY_RETENTION_HOURS = 24


def prepare_metrics_dir() -> Path:
    """Point prometheus_client's multiprocess mode at an empty directory (before any worker imports it)."""
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    directory = Path(configured) if configured else Path(tempfile.mkdtemp(prefix="orders-metrics-"))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    return directory


def serve(settings: Settings) -> None:
    """Serve the app with Granian: ASGI, uvloop, ``WORKERS`` processes, graceful on SIGTERM."""
    from granian.constants import Interfaces, Loops  # noqa: PLC0415 - keep `--help` fast
    from granian.server import Server  # noqa: PLC0415

    prepare_metrics_dir()
    os.environ.update(settings.as_env())  # the workers build their app from the environment
    Server(
        APP_TARGET,
        address=settings.listen_host,
        port=settings.listen_port,
        interface=Interfaces.ASGI,
        workers=settings.workers,
        loop=Loops.uvloop,
        workers_kill_timeout=settings.worker_kill_timeout,
        respawn_failed_workers=True,
    ).serve()


def dev() -> None:
    """Run locally: embedded PostgreSQL unless ``DB_*`` is set, demo catalog, migrations, then serve."""
    if any(name in os.environ for name in DB_ENV_VARS):
        serve_with_demo_catalog(Settings.from_env())
        return
    from orders_service.embedded_db import embedded_postgres  # noqa: PLC0415

    logger.info("no DB_* variables set: starting the embedded PostgreSQL in %s", DEV_DATA_DIR)
    with embedded_postgres(DEV_DATA_DIR.resolve()) as db_env:
        os.environ.update(db_env)
        serve_with_demo_catalog(Settings.from_env())


def serve_with_demo_catalog(settings: Settings) -> None:
    """Create the demo catalog if there is none, apply the migrations, serve."""
    from sqlalchemy import create_engine  # noqa: PLC0415

    from orders_service import migrate  # noqa: PLC0415
    from orders_service.catalog import ensure_demo_catalog  # noqa: PLC0415

    engine = create_engine(settings.database_url)
    with engine.begin() as connection:
        if ensure_demo_catalog(connection, settings):
            logger.info("created %s.products with demo products", settings.catalog_schema)
    engine.dispose()
    migrate.upgrade(settings)
    serve(settings)


def purge_idempotency_keys(settings: Settings, older_than_hours: int) -> int:
    """Delete idempotency keys older than ``older_than_hours`` (at least 24); orders stay. Returns the count."""
    from datetime import UTC, datetime, timedelta  # noqa: PLC0415

    from sqlalchemy.ext.asyncio import AsyncSession  # noqa: PLC0415

    from orders_service.database import sqlalchemy_config  # noqa: PLC0415
    from orders_service.repositories import IdempotencyKeyRepository  # noqa: PLC0415

    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)

    async def purge() -> int:
        engine = sqlalchemy_config(settings).get_engine()
        try:
            async with AsyncSession(engine) as session:
                deleted = await IdempotencyKeyRepository(session=session).delete_older_than(cutoff)
                await session.commit()
                return deleted
        finally:
            await engine.dispose()

    return asyncio.run(purge())


def _at_least_24(value: str) -> int:
    hours = int(value)
    if hours < MIN_KEY_RETENTION_HOURS:
        raise argparse.ArgumentTypeError(f"keys are kept at least {MIN_KEY_RETENTION_HOURS} hours")
    return hours


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="orders-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve with Granian (production; configured by environment variables)")
    commands.add_parser("dev", help="run locally on an embedded PostgreSQL unless DB_* is set")
    purge = commands.add_parser("purge-idempotency-keys", help="delete old idempotency keys (orders stay)")
    purge.add_argument(
        "--older-than-hours", type=_at_least_24, default=MIN_KEY_RETENTION_HOURS, help="default and minimum: 24"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "serve":
            serve(Settings.from_env())
        elif args.command == "dev":
            dev()
        else:
            deleted = purge_idempotency_keys(Settings.from_env(), args.older_than_hours)
            print(f"deleted {deleted} idempotency key(s) older than {args.older_than_hours} hours")
    except ConfigError as exc:
        print(f"orders-service: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
