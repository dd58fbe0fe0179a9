"""Settings: the contract's defaults, the environment's names, and a clear error for every bad value."""

from __future__ import annotations

from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict
from sqlalchemy.pool import QueuePool

from orders_service.config import ConfigError, Settings


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


def test_the_body_read_timeout_is_10_seconds_unless_set() -> None:
    assert Settings.from_env({}).body_read_timeout == 10.0
    assert Settings.from_env({"BODY_READ_TIMEOUT": "0.5"}).body_read_timeout == 0.5


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
        ("BODY_READ_TIMEOUT", "0"),
        ("BODY_READ_TIMEOUT", "301"),
        ("BODY_READ_TIMEOUT", "soon"),
        ("DB_HOST", "db1:99999"),
        ("DB_HOST", "db1:"),
        ("DB_HOST", "db1,,db2"),
        ("DB_HOST", ""),
        ("DB_READ_HOSTS", "replica:0"),
        ("DB_TARGET_SESSION_ATTRS", "primary-ish"),
        ("DB_READ_MAX_LAG_MS", "-1"),
        ("EVENTS_AWAIT_STANDBYS", "17"),
    ],
)
def test_settings_reject_bad_values_naming_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name) as refused:
        Settings.from_env({name: value})
    assert "\n" not in str(refused.value)


def test_several_hosts_with_their_own_ports_reach_libpq_as_lists() -> None:
    settings = Settings.from_env({"DB_HOST": "db1.internal,db2.internal:5433,[::1]:5434", "DB_PORT": "6432"})
    assert settings.database_url.query == {"host": "db1.internal,db2.internal,::1", "port": "6432,5433,5434"}
    info = conninfo_to_dict(settings.conninfo)
    assert (info["host"], info["port"], info["target_session_attrs"]) == (
        "db1.internal,db2.internal,::1",
        "6432,5433,5434",
        "read-write",
    )
    assert Settings.from_env(settings.as_env()) == settings


def test_one_host_with_a_port_overrides_db_port() -> None:
    url = Settings.from_env({"DB_HOST": "db:6543", "DB_PORT": "5432"}).database_url
    assert (url.host, url.port) == ("db", 6543)


def test_read_replicas_are_off_unless_named() -> None:
    assert Settings.from_env({}).read_endpoints == []
    replicas = Settings.from_env({"DB_READ_HOSTS": "r1,r2:5433"}).read_database_url
    assert replicas.query == {"host": "r1,r2", "port": "5432,5433"}


def test_fractional_pool_timeout_is_kept() -> None:
    from orders_service.db.engine import request_engine  # noqa: PLC0415

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


JWT = {"AUTH_MODE": "jwt", "AUTH_ISSUER": "https://gateway.test", "AUTH_AUDIENCE": "orders-service"}
JWKS_URL = {"AUTH_JWKS_URL": "https://gateway.test/.well-known/jwks.json"}
LONG_SECRET = "s" * 32


def test_the_identity_is_x_user_unless_set() -> None:
    assert Settings.from_env({}).auth_mode == "x-user"
    # The AUTH_* settings are not checked in the default mode: it never reads them.
    assert Settings.from_env({"AUTH_ALGORITHMS": "none"}).auth_mode == "x-user"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"AUTH_MODE": "jwt"}, "needs AUTH_ISSUER"),
        ({**JWT, "AUTH_AUDIENCE": "", **JWKS_URL}, "needs AUTH_AUDIENCE"),
        (JWT, "needs AUTH_JWKS_URL or AUTH_JWKS_FILE"),
        ({**JWT, **JWKS_URL, "AUTH_JWKS_FILE": "/etc/jwks.json"}, "not both"),
        ({**JWT, **JWKS_URL, "AUTH_ALGORITHMS": "ES256,none"}, "'none' is not one of"),
        ({**JWT, **JWKS_URL, "AUTH_ALGORITHMS": "HS512"}, "'HS512' is not one of"),
        ({**JWT, **JWKS_URL, "AUTH_ALGORITHMS": " , "}, "AUTH_ALGORITHMS is empty"),
        ({**JWT, "AUTH_ALGORITHMS": "HS256", "AUTH_HS256_SECRET": "s" * 31}, "at least 32 bytes"),
        ({**JWT, "AUTH_ALGORITHMS": "HS256"}, "at least 32 bytes"),
        ({**JWT, **JWKS_URL, "AUTH_HS256_SECRET": LONG_SECRET}, "does not allow HS256"),
        ({**JWT, **JWKS_URL, "AUTH_ALGORITHMS": "HS256", "AUTH_HS256_SECRET": LONG_SECRET}, "no algorithm that uses"),
        ({**JWT, "AUTH_JWKS_URL": "ftp://gateway.test/jwks"}, "http:// or https://"),
        ({**JWT, "AUTH_JWKS_FILE": "/nonexistent/jwks.json"}, "cannot be read"),
        ({**JWT, **JWKS_URL, "AUTH_MODE": "signed"}, "AUTH_MODE"),
        ({**JWT, **JWKS_URL, "AUTH_LEEWAY_SECONDS": "301"}, "AUTH_LEEWAY_SECONDS"),
        ({**JWT, **JWKS_URL, "AUTH_REALM": 'a"b'}, "AUTH_REALM"),
    ],
)
def test_jwt_mode_refuses_bad_combinations_in_one_line(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)
    assert "\n" not in str(refused.value)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("not json", "is not a JWKS with a usable key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0c2VjcmV0c2VjcmV0", "kid": "a"}]}', "no public key"),
    ],
)
def test_jwt_mode_refuses_a_jwks_file_without_a_public_key(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(document)
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**JWT, "AUTH_JWKS_FILE": str(path)})


def test_jwt_mode_settings_round_trip_through_environment(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(LONG_SECRET + "\n")
    env = {**JWT, **JWKS_URL, "AUTH_ALGORITHMS": "ES256, HS256", "AUTH_HS256_SECRET_FILE": str(secret)}
    settings = Settings.from_env(env)
    assert settings.auth_algorithm_list == ["ES256", "HS256"]
    assert settings.hs256_secret == LONG_SECRET.encode()
    assert Settings.from_env(settings.as_env()) == settings
