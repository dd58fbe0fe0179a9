"""Settings read from the environment, validated once at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

import msgspec
from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# Schema names are interpolated into DDL, so only plain identifiers are accepted.
SchemaName = Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
LogFormat = Literal["json", "console"]
# How the caller is identified: the X-User header the Gateway sets, or a JWT the Gateway signs (Authorization: Bearer).
AuthMode = Literal["x-user", "jwt"]
ASYMMETRIC_ALGORITHMS = ("ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA")
SHARED_SECRET_ALGORITHM = "HS256"  # noqa: S105 - an algorithm's name, not a secret
MIN_HS256_SECRET_BYTES = 32


DEADLINE_MARGIN_SECONDS = 2.0
# libpq's target_session_attrs: which of DB_HOST's servers a connection may use.
SessionAttrs = Literal["read-write", "primary", "any", "read-only", "standby", "prefer-standby"]
_HOST_PORT = re.compile(r"^(?P<host>\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(?P<port>\d{1,5}))?$")


class Endpoint(NamedTuple):
    """One server of a host list: a host name or address (a Unix socket directory when it starts with ``/``)."""

    host: str
    port: int


def parse_hosts(value: str, default_port: int, name: str) -> list[Endpoint]:
    """``DB_HOST`` (or ``DB_READ_HOSTS``): hosts separated by commas, each with an optional ``:port``
    (``db1:5432,db2:5433``; ``[::1]:5433`` for an IPv6 address; a socket directory takes the default port).
    ValueError says which entry is wrong."""
    endpoints = []
    for entry in value.split(","):
        text = entry.strip()
        if text.startswith("/"):
            endpoints.append(Endpoint(text, default_port))
            continue
        found = _HOST_PORT.match(text)
        if found is None:
            raise ValueError(f"{name} entry {entry!r} is not host or host:port")
        port = int(found["port"]) if found["port"] else default_port
        if not 1 <= port <= 65535:
            raise ValueError(f"{name} entry {entry!r}: the port must be 1-65535")
        endpoints.append(Endpoint(found["host"].strip("[]"), port))
    return endpoints


class ConfigError(ValueError):
    """A setting from the environment has a bad value."""


def check_jwt_settings(settings: Settings) -> None:
    """AUTH_MODE=jwt: the combinations that cannot verify a token safely; ValueError says which."""
    algorithms = settings.auth_algorithm_list
    if not algorithms:
        raise ValueError("AUTH_ALGORITHMS is empty")
    known = (*ASYMMETRIC_ALGORITHMS, SHARED_SECRET_ALGORITHM)
    for name in algorithms:
        if name not in known:
            raise ValueError(f"AUTH_ALGORITHMS: {name!r} is not one of {', '.join(known)}")
    if not settings.auth_issuer:
        raise ValueError("AUTH_MODE=jwt needs AUTH_ISSUER (the iss every token must carry)")
    if not settings.auth_audience:
        raise ValueError("AUTH_MODE=jwt needs AUTH_AUDIENCE (the aud every token must carry)")
    asymmetric = [name for name in algorithms if name != SHARED_SECRET_ALGORITHM]
    key_sources = [name for name in ("AUTH_JWKS_URL", "AUTH_JWKS_FILE") if getattr(settings, name.lower())]
    if asymmetric and not key_sources:
        raise ValueError(f"AUTH_ALGORITHMS {','.join(asymmetric)} needs AUTH_JWKS_URL or AUTH_JWKS_FILE")
    if len(key_sources) > 1:
        raise ValueError("set AUTH_JWKS_URL or AUTH_JWKS_FILE, not both")
    if key_sources and not asymmetric:
        raise ValueError(f"{key_sources[0]} is set but AUTH_ALGORITHMS has no algorithm that uses it")
    if settings.auth_jwks_url and not settings.auth_jwks_url.startswith(("https://", "http://")):
        raise ValueError("AUTH_JWKS_URL must be an http:// or https:// URL")
    if settings.auth_jwks_file:
        _check_jwks_file(settings.auth_jwks_file)
    _check_shared_secret(settings, uses_it=SHARED_SECRET_ALGORITHM in algorithms)


def _check_jwks_file(path: str) -> None:
    from jwt import PyJWKSet  # noqa: PLC0415 - only AUTH_MODE=jwt loads PyJWT
    from jwt.exceptions import PyJWKSetError  # noqa: PLC0415

    try:
        keys = PyJWKSet.from_json(Path(path).read_text(encoding="utf-8")).keys
    except OSError as exc:
        raise ValueError(f"AUTH_JWKS_FILE {path!r} cannot be read: {exc.strerror}") from None
    except (PyJWKSetError, ValueError) as exc:
        raise ValueError(f"AUTH_JWKS_FILE {path!r} is not a JWKS with a usable key: {exc}") from None
    # What auth/signing_keys.py uses: public keys a token can name.
    if not any(key.key_id and key.key_type in {"EC", "RSA", "OKP"} for key in keys):
        raise ValueError(f"AUTH_JWKS_FILE {path!r} has no public key (EC, RSA, OKP) with a kid")


def _check_shared_secret(settings: Settings, *, uses_it: bool) -> None:
    names = [name for name in ("AUTH_HS256_SECRET", "AUTH_HS256_SECRET_FILE") if getattr(settings, name.lower())]
    if len(names) > 1:
        raise ValueError("set AUTH_HS256_SECRET or AUTH_HS256_SECRET_FILE, not both")
    if names and not uses_it:
        raise ValueError(f"{names[0]} is set but AUTH_ALGORITHMS does not allow HS256")
    if not uses_it:
        return
    try:
        secret = settings.hs256_secret
    except OSError as exc:
        raise ValueError(f"AUTH_HS256_SECRET_FILE cannot be read: {exc.strerror}") from None
    if len(secret) < MIN_HS256_SECRET_BYTES:
        raise ValueError(
            f"HS256 needs a shared secret of at least {MIN_HS256_SECRET_BYTES} bytes (AUTH_HS256_SECRET or"
            f" AUTH_HS256_SECRET_FILE), got {len(secret)}"
        )


class Settings(msgspec.Struct, frozen=True, kw_only=True, rename="upper"):
    """Every knob of the service; field ``db_host`` is read from ``DB_HOST`` and so on."""

    db_host: Annotated[str, msgspec.Meta(min_length=1)] = "localhost"
    db_port: Port = 5432
    db_target_session_attrs: SessionAttrs = "read-write"
    db_read_hosts: str = ""
    db_read_max_lag_ms: Annotated[int, msgspec.Meta(ge=0, le=3_600_000)] = 1_000
    db_name: str = "appdb"
    db_user: str = "app"
    db_pass: str = "app"  # noqa: S105 - the documented default
    db_schema: SchemaName = "orders"
    catalog_schema: SchemaName = "catalog"
    db_pool_size: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 10
    db_pool_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    db_lock_timeout_ms: Annotated[int, msgspec.Meta(ge=1, le=600_000)] = 5_000
    db_statement_timeout_ms: Annotated[int, msgspec.Meta(ge=100, le=3_600_000)] = 30_000
    db_prepared_statements: bool = True
    db_connect_timeout: Annotated[int, msgspec.Meta(ge=2, le=300)] = 3
    db_tcp_user_timeout_ms: Annotated[int, msgspec.Meta(ge=0, le=600_000)] = 10_000
    db_keepalives_idle: Annotated[int, msgspec.Meta(ge=1, le=7200)] = 10
    db_keepalives_interval: Annotated[int, msgspec.Meta(ge=1, le=600)] = 5
    db_keepalives_count: Annotated[int, msgspec.Meta(ge=1, le=100)] = 3
    order_batch_max: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 64
    order_batch_wait_ms: Annotated[float, msgspec.Meta(ge=0, le=100)] = 0.0
    order_queue_per_product: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1_000
    order_queue_per_worker: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 4_000
    listen_host: str = "0.0.0.0"  # noqa: S104 - the container must be reachable by the Gateway
    listen_port: Port = 8000
    workers: Annotated[int, msgspec.Meta(ge=1, le=256)] = 1
    http_backlog: Annotated[int, msgspec.Meta(ge=128, le=65_535)] = 4096
    # 0: as many as the open-files limit allows, up to HTTP_CONNECTIONS_AUTO_MAX (see lifecycle/connection_limits.py)
    http_max_connections: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 0
    http_idle_timeout: Annotated[float, msgspec.Meta(ge=1, le=3600)] = 75.0
    worker_kill_timeout: Annotated[int, msgspec.Meta(ge=1, le=600)] = 30
    shutdown_grace_seconds: Annotated[float, msgspec.Meta(ge=0, le=600)] = 10.0
    health_timeout: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    body_read_timeout: Annotated[float, msgspec.Meta(gt=0, le=300)] = 10.0
    openapi_enabled: bool = True
    log_level: LogLevel = "INFO"
    log_format: LogFormat = "json"  # `orders-service dev` defaults to "console"
    log_user: bool = False
    access_log: bool = True
    # Events (the transactional outbox and its relay to RabbitMQ); AMQP_URL empty: the relay is off.
    amqp_url: str = ""
    events_exchange: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "orders"
    events_source: Annotated[str, msgspec.Meta(min_length=1)] = "/orders-service"
    events_relay_in_serve: bool = True
    events_listen: bool = True
    events_poll_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=60_000)] = 1_000
    events_lease_ttl_ms: Annotated[int, msgspec.Meta(ge=500, le=600_000)] = 5_000
    events_batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 500
    events_linger_ms: Annotated[int, msgspec.Meta(ge=0, le=1_000)] = 100
    events_notify_interval_ms: Annotated[int, msgspec.Meta(ge=1, le=1_000)] = 20
    events_retention_hours: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 168
    # How many standbys must have flushed an event's commit before it is published (0: once committed).
    events_await_standbys: Annotated[int, msgspec.Meta(ge=0, le=16)] = 0
    # Identity (see docs/deploying.md#identity-the-gateway-signs); the AUTH_* settings apply to AUTH_MODE=jwt only.
    auth_mode: AuthMode = "x-user"
    auth_user_claim: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] = "sub"
    auth_issuer: str = ""
    auth_audience: str = ""
    auth_algorithms: str = "ES256,RS256,EdDSA"
    auth_jwks_url: str = ""
    auth_jwks_file: str = ""
    auth_hs256_secret: str = ""
    auth_hs256_secret_file: str = ""
    auth_leeway_seconds: Annotated[int, msgspec.Meta(ge=0, le=300)] = 30
    auth_max_lifetime_seconds: Annotated[int, msgspec.Meta(ge=1, le=86_400)] = 3_600
    auth_jwks_max_age_seconds: Annotated[float, msgspec.Meta(ge=1, le=86_400)] = 300.0
    auth_jwks_refresh_cooldown_seconds: Annotated[float, msgspec.Meta(ge=0, le=3_600)] = 5.0
    auth_jwks_fetch_timeout_seconds: Annotated[float, msgspec.Meta(gt=0, le=60)] = 2.0
    auth_realm: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9 ._:/-]{1,64}$")] = "orders"

    def __post_init__(self) -> None:
        parse_hosts(self.db_host, self.db_port, "DB_HOST")
        if self.db_read_hosts:
            parse_hosts(self.db_read_hosts, self.db_port, "DB_READ_HOSTS")
        if self.auth_mode == "jwt":
            check_jwt_settings(self)

    @property
    def auth_algorithm_list(self) -> list[str]:
        """``AUTH_ALGORITHMS`` as a list, in the order written."""
        return [name.strip() for name in self.auth_algorithms.split(",") if name.strip()]

    @property
    def hs256_secret(self) -> bytes:
        """The HS256 shared secret (``AUTH_HS256_SECRET``, or the contents of ``AUTH_HS256_SECRET_FILE``); empty when
        none is set."""
        if self.auth_hs256_secret_file:
            return Path(self.auth_hs256_secret_file).read_bytes().strip()
        return self.auth_hs256_secret.encode()

    @property
    def db_endpoints(self) -> list[Endpoint]:
        """The servers of ``DB_HOST``, in order: libpq tries them in turn (``target_session_attrs``)."""
        return parse_hosts(self.db_host, self.db_port, "DB_HOST")

    @property
    def read_endpoints(self) -> list[Endpoint]:
        """The read replicas of ``DB_READ_HOSTS`` (none by default)."""
        return parse_hosts(self.db_read_hosts, self.db_port, "DB_READ_HOSTS") if self.db_read_hosts else []

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read the settings from ``environ`` (default ``os.environ``); raise ConfigError on a bad value."""
        env = os.environ if environ is None else environ
        names = {field.encode_name for field in msgspec.structs.fields(cls)}
        raw = {name: value for name, value in env.items() if name in names}
        # Level names as Python spells them, whatever the case they were written in.
        if "LOG_LEVEL" in raw:
            raw["LOG_LEVEL"] = raw["LOG_LEVEL"].upper()
        try:
            return msgspec.convert(raw, cls, strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid configuration: {exc}") from None

    @property
    def database_url(self) -> URL:
        """SQLAlchemy URL for psycopg 3 (async and sync engines share it): ``DB_HOST``'s servers."""
        return self._url(self.db_endpoints)

    @property
    def read_database_url(self) -> URL:
        """The URL of the read replicas (``DB_READ_HOSTS``)."""
        return self._url(self.read_endpoints)

    def _url(self, endpoints: list[Endpoint]) -> URL:
        """One TCP server as the URL's host and port; a Unix socket directory, or several servers, as libpq's
        ``host``/``port`` lists in the query (SQLAlchemy hands them to psycopg as they are)."""
        if len(endpoints) == 1 and not endpoints[0].host.startswith("/"):
            (endpoint,) = endpoints
            return URL.create(
                "postgresql+psycopg",
                username=self.db_user,
                password=self.db_pass,
                host=endpoint.host,
                port=endpoint.port,
                database=self.db_name,
            )
        return URL.create(
            "postgresql+psycopg",
            username=self.db_user,
            password=self.db_pass,
            database=self.db_name,
            query={
                "host": ",".join(endpoint.host for endpoint in endpoints),
                "port": ",".join(str(endpoint.port) for endpoint in endpoints),
            },
        )

    @property
    def conninfo(self) -> str:
        """The libpq connection string of ``DB_*`` (for psycopg used directly), ``target_session_attrs`` included."""
        endpoints = self.db_endpoints
        return make_conninfo(
            host=",".join(endpoint.host for endpoint in endpoints),
            port=",".join(str(endpoint.port) for endpoint in endpoints),
            user=self.db_user,
            password=self.db_pass,
            dbname=self.db_name,
            target_session_attrs=self.db_target_session_attrs,
        )

    @property
    def db_deadline_seconds(self) -> float:
        """How long a request waits for the database's answer before giving up on the connection.

        The server ends a statement after ``DB_STATEMENT_TIMEOUT_MS``; the margin lets its error
        arrive. Past this, the server or the network is not answering (a frozen network delivers
        no error at all), so the connection is dropped and the request answers 503.
        """
        return self.db_statement_timeout_ms / 1000 + DEADLINE_MARGIN_SECONDS

    @property
    def schema_translate_map(self) -> dict[str | None, str]:
        """Maps the schema names written in the models to the configured ones."""
        return {"orders": self.db_schema, "catalog": self.catalog_schema}

    @property
    def outbox_channel(self) -> str:
        """The NOTIFY channel of this schema's outbox (one per DB_SCHEMA: deployments sharing a database stay apart)."""
        return f"{self.db_schema}_outbox"

    def as_env(self) -> dict[str, str]:
        """The settings as environment variables, for child processes (Granian workers)."""
        values = msgspec.to_builtins(self)
        return {name: str(value).lower() if isinstance(value, bool) else str(value) for name, value in values.items()}
