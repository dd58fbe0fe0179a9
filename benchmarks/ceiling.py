"""The ceiling: pgbench runs the SQL of one request of each scenario, as the service sends it.

Each pgbench script is the service's own pipeline: the per-transaction timeouts and the
request's statement, compiled from the same SQLAlchemy Core statements, in one
``\\startpipeline … \\endpipeline`` (one implicit transaction, one round trip), prepared.
It runs against a copy of the benchmark database, so the service's figures start from the same
tables. No service can pass these figures on the same machine.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path

from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg

from benchmarks.seed import PRODUCTS, READERS
from orders_service.config import Settings
from orders_service.db.statements import Statement
from orders_service.db.transactions import SET_TIMEOUTS
from orders_service.orders.place_sql import PLACE_ORDERS
from orders_service.orders.read_sql import FIRST_PAGE, PRIMARY_POSITION

# The flash-sale references beside ``hot``'s ceiling (the service's one order per transaction, one statement):
HOT_ROW = "hot-row"  # one statement that only decrements product 1's row: one row per transaction, nothing else
HOT_X10 = "hot-x10"  # the service's statement placing ten orders of product 1 per transaction
FLASH_SALE_REFERENCES = {HOT_ROW: 1, HOT_X10: 10}  # orders per transaction
VERSION_LOOKUP = "version-lookup"  # with read replicas: the primary's share of a read a replica serves


def _sql(statement: Statement | str, settings: Settings, values: dict[str, str]) -> str:
    """The statement's SQL with each ``%(name)s`` replaced by a pgbench expression (or literal)."""
    if isinstance(statement, Statement):
        sql, literals = statement.compiled(PGDialect_psycopg(), settings.schema_translate_map)  # type: ignore[no-untyped-call]
        values = {
            **{name: repr(value) if isinstance(value, str) else str(value) for name, value in literals.items()},
            **values,
        }
    else:
        sql = statement
    sql = re.sub(r"%\((\w+)\)s", lambda match: values[match.group(1)], sql)
    return " ".join(sql.split()) + ";"


def _timeouts(settings: Settings) -> str:
    return _sql(
        SET_TIMEOUTS,
        settings,
        {
            "lock_timeout": f"'{settings.db_lock_timeout_ms}'",
            "statement_timeout": f"'{settings.db_statement_timeout_ms}'",
        },
    )


def _place_orders(settings: Settings, owners: list[str], lines: list[tuple[int, str]], wait_for: str) -> str:
    """``PLACE_ORDERS`` for orders without keys: ``lines`` are (order number, product id expression), qty 1."""

    def array(values: list[str]) -> str:
        return f"ARRAY[{', '.join(values)}]"

    return _sql(
        PLACE_ORDERS,
        settings,
        {
            "owners": array(owners),
            "keys": array(["NULL"] * len(owners)),
            "hashes": array(["NULL"] * len(owners)),
            "line_orders": array([str(number) for number, _ in lines]),
            "line_products": array([product for _, product in lines]),
            "line_qtys": array(["1"] * len(lines)),
            "line_held": array(["0"] * len(lines)),
            "wait_for": wait_for,
            "orders": str(len(owners)),
        },
    )


def create_script(settings: Settings, products: int, *, hot: bool = False) -> str:
    """An order of ``products`` distinct products (ascending, as the service sends them), qty 1, alone."""
    bounds = [(1 + k * PRODUCTS // products, (k + 1) * PRODUCTS // products) for k in range(products)]
    sets = [f"\\set p{k} random({low}, {high})" for k, (low, high) in enumerate(bounds)]
    ids = ["1"] if hot else [f":p{k}" for k in range(products)]
    # As the service: the transaction waits for the first product's row only.
    place = _place_orders(settings, ["('buyer-' || :u)"], [(1, product) for product in ids], ids[0])
    lines = ["\\set u random(1, 5000)", *([] if hot else sets), "\\startpipeline", _timeouts(settings), place]
    return "\n".join([*lines, "\\endpipeline"]) + "\n"


def hot_row_script(settings: Settings) -> str:
    """The least a transaction can do to one product's row: one decrement, in one statement."""
    return f"UPDATE {settings.catalog_schema}.products SET stock = stock - 1 WHERE id = 1 AND stock >= 1;\n"


def hot_batch_script(settings: Settings, orders: int) -> str:
    """``orders`` orders of product 1 (qty 1, users at random) in one transaction: ``PLACE_ORDERS``."""
    users = [f"\\set u{k} random(1, 5000)" for k in range(orders)]
    owners = [f"('buyer-' || :u{k})" for k in range(orders)]
    place = _place_orders(settings, owners, [(k, "1") for k in range(1, orders + 1)], "1")
    return "\n".join([*users, "\\startpipeline", _timeouts(settings), place, "\\endpipeline"]) + "\n"


def _reader_pipeline(settings: Settings, sql: str) -> str:
    """A pgbench script: a random reader ``:r``, then the timeouts and ``sql`` in one pipeline."""
    lines = [f"\\set r random(0, {READERS - 1})", "\\startpipeline", _timeouts(settings), sql, "\\endpipeline"]
    return "\n".join(lines) + "\n"


def list_script(settings: Settings) -> str:
    return _reader_pipeline(settings, _sql(FIRST_PAGE, settings, {"owner": "('reader-' || :r)", "limit": "51"}))


def version_lookup_script(settings: Settings) -> str:
    """What a read served by a replica costs the primary: the user's write version and the flushed WAL position."""
    return _reader_pipeline(settings, _sql(PRIMARY_POSITION, settings, {"owner": "('reader-' || :r)"}))


def scripts(settings: Settings, scenario: str, directory: Path) -> list[str]:
    """pgbench -f arguments (with weights) for a scenario."""

    def write(name: str, text: str) -> str:
        path = directory / f"{name}.sql"
        path.write_text(text)
        return str(path)

    create = [f"{write(f'create{n}', create_script(settings, n))}@1" for n in (1, 2, 3)]
    if scenario == "create":
        return create
    single = {
        "hot": lambda: create_script(settings, 1, hot=True),
        HOT_ROW: lambda: hot_row_script(settings),
        HOT_X10: lambda: hot_batch_script(settings, FLASH_SALE_REFERENCES[HOT_X10]),
        VERSION_LOOKUP: lambda: version_lookup_script(settings),
    }
    if scenario in single:
        return [write(scenario, single[scenario]())]
    listing = write("list", list_script(settings))
    if scenario == "list":
        return [listing]
    # mixed: 80 % list, 20 % create (create split over its three shapes)
    return [f"{listing}@12", *create]


def run_pgbench(pgbench: str, settings: Settings, scenario: str, *, clients: int, seconds: int) -> dict[str, float]:
    """Run pgbench for ``scenario``; transactions per second and latency percentiles (ms) from its log."""
    with tempfile.TemporaryDirectory(prefix="orders-pgbench-") as directory:
        workdir = Path(directory)
        files = scripts(settings, scenario, workdir)
        command = [
            pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            "2",
            "-T",
            str(seconds),
            "-l",
            "--log-prefix",
            str(workdir / "log"),
            "-h",
            settings.db_host,
            "-p",
            str(settings.db_port),
            "-U",
            settings.db_user,
            settings.db_name,
        ]
        for spec in files:
            command += ["-f", spec]
        env = {"PGPASSWORD": settings.db_pass, "PATH": "/usr/bin:/bin"}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False, timeout=seconds + 120)
        if result.returncode != 0:
            raise RuntimeError(f"pgbench failed: {result.stderr[-2000:]}")
        latencies = sorted(
            int(line.split()[2]) / 1000
            for log in workdir.glob("log*")
            for line in log.read_text().splitlines()
            if line.strip()
        )
    match = re.search(r"tps = ([\d.]+) \(without initial connection time\)", result.stdout)
    failed = re.search(r"number of failed transactions: (\d+)", result.stdout)
    return {
        "req_s": float(match[1]) if match else 0.0,
        "p50_ms": _percentile(latencies, 50),
        "p90_ms": _percentile(latencies, 90),
        "p99_ms": _percentile(latencies, 99),
        "max_ms": latencies[-1] if latencies else 0.0,
        "non_2xx": float(failed[1]) if failed else 0.0,
    }


def _percentile(values: list[float], percent: int) -> float:
    if not values:
        return 0.0
    return values[min(len(values) - 1, int(len(values) * percent / 100))]
