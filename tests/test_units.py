"""Pure parts: line combining, rejection reasons, settings validation."""

from __future__ import annotations

import pytest
from sqlalchemy.pool import QueuePool

from orders_service.config import ConfigError, Settings
from orders_service.repositories import PlacementOutcome
from orders_service.schemas import OrderLine
from orders_service.services import combine_lines, rejection


def test_combine_lines_sums_duplicates_and_sorts_by_product_id() -> None:
    lines = [OrderLine(3, 1), OrderLine(1, 2), OrderLine(3, 4)]
    assert combine_lines(lines) == {1: 2, 3: 5}
    assert list(combine_lines(lines)) == [1, 3]


def test_unknown_products_win_over_missing_stock() -> None:
    rejected = rejection(PlacementOutcome(missing=[9, 7], short=[1]), {1: 1, 7: 1, 9: 2})
    assert rejected.reason == "missing_product"
    assert rejected.product_ids == [7, 9]
    assert rejected.detail == "unknown product id(s): 7, 9"


def test_every_short_product_is_reported() -> None:
    rejected = rejection(PlacementOutcome(short=[2, 1], total_cents=10), {1: 4, 2: 2, 3: 9})
    assert rejected.reason == "insufficient_stock"
    assert rejected.product_ids == [1, 2]


def test_a_total_beyond_bigint_names_every_product() -> None:
    rejected = rejection(PlacementOutcome(total_cents=2**63), {1: 4, 2: 2})
    assert rejected.reason == "total_too_large"
    assert rejected.product_ids == [1, 2]


def test_settings_defaults_match_the_contract() -> None:
    settings = Settings.from_env({})
    assert (settings.db_host, settings.db_port, settings.db_name, settings.db_user, settings.db_pass) == (
        "localhost",
        5432,
        "appdb",
        "app",
        "app",
    )
    assert (settings.db_schema, settings.catalog_schema, settings.listen_port) == ("orders", "catalog", 8000)


def test_settings_read_from_environment_names() -> None:
    settings = Settings.from_env({"DB_PORT": "6543", "DB_SCHEMA": "shop", "WORKERS": "4", "UNRELATED": "x"})
    assert (settings.db_port, settings.db_schema, settings.workers) == (6543, "shop", 4)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DB_PORT", "abc"),
        ("DB_PORT", "70000"),
        ("LISTEN_PORT", "0"),
        ("WORKERS", "0"),
        ("DB_POOL_SIZE", "-1"),
        ("DB_SCHEMA", "orders; DROP TABLE x"),
        ("CATALOG_SCHEMA", "Catalog"),
        ("OPENAPI_ENABLED", "maybe"),
    ],
)
def test_settings_reject_bad_values_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: value})


def test_fractional_pool_timeout_is_kept() -> None:
    from orders_service.database import request_engine  # noqa: PLC0415

    engine = request_engine(Settings.from_env({"DB_POOL_TIMEOUT": "0.5"}))
    pool = engine.sync_engine.pool
    assert isinstance(pool, QueuePool)
    assert pool.timeout() == 0.5


def test_settings_round_trip_through_environment() -> None:
    settings = Settings.from_env({"DB_HOST": "/run/pg", "OPENAPI_ENABLED": "false", "HEALTH_TIMEOUT": "0.5"})
    assert Settings.from_env(settings.as_env()) == settings


def test_socket_directory_host_renders_a_usable_url() -> None:
    url = Settings.from_env({"DB_HOST": "/tmp/pg sock"}).database_url  # noqa: S108
    assert url.query == {"host": "/tmp/pg sock", "port": "5432"}  # noqa: S108
    assert url.render_as_string(hide_password=False).startswith("postgresql+psycopg://app:app@/appdb?")
