"""The Prometheus metrics the service exports: HTTP metrics with the contract's exact names, order counters, saturation.

In multi-worker deployments ``PROMETHEUS_MULTIPROC_DIR`` must be set before this module
is imported (``orders-service serve`` does it); ``/metrics`` then aggregates all workers
(counters and histograms summed, gauges summed over the live workers).
"""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from orders_service.causes import SIGNING_KEYS_UNAVAILABLE, AuthRefusalReason, RejectionReason, UnavailableCause

SERVICE = "orders"

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests handled.", ["service", "path", "method", "status"])
# From a liveness probe (~0.3 ms) to past the statement timeout (30 s by default).
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "HTTP request duration in seconds.",
    ["service", "path", "method"],
    buckets=DURATION_BUCKETS,
)
ORDERS_CREATED = Counter("orders_created_total", "Orders placed.")
ORDERS_CANCELLED = Counter("orders_cancelled_total", "Orders cancelled (stock put back).")
ORDER_CREATE_FAILURES = Counter("order_create_failures_total", "Orders rejected, by reason.", ["reason"])
for _reason in get_args(RejectionReason):
    ORDER_CREATE_FAILURES.labels(reason=_reason)
TRANSACTION_RETRIES = Counter(
    "db_transaction_retries_total",
    "Transactions run again after a deadlock, a serialization failure, or an Idempotency-Key a concurrent twin"
    " committed first (idempotency_key_race).",
    ["cause"],
)
TRANSACTION_RETRY_CAUSES = ("deadlock", "serialization_failure", "idempotency_key_race")
for _cause in TRANSACTION_RETRY_CAUSES:
    TRANSACTION_RETRIES.labels(cause=_cause)
BUSY_PRODUCT_RETRIES = Counter(
    "orders_busy_product_retries_total",
    "Orders and cancellations tried again, waiting for a product (or the order) another transaction held.",
)
ORDERS_PER_TRANSACTION = Histogram(
    "orders_per_transaction",
    "Orders decided together in one transaction (1 for a lone order; a flash sale's concurrent orders of a product).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
SERVICE_UNAVAILABLE = Counter(
    "service_unavailable_responses_total", "503 answers of the API (readiness excluded), by cause.", ["cause"]
)
SERVICE_UNAVAILABLE_BY_CAUSE = {cause: SERVICE_UNAVAILABLE.labels(cause=cause) for cause in get_args(UnavailableCause)}

REQUEST_POOL = "requests"
REPLICA_POOL = "replicas"
POOL_IN_USE = Gauge(
    "db_pool_connections_in_use", "Pooled connections running a transaction.", ["pool"], multiprocess_mode="livesum"
)
POOL_MAX = Gauge("db_pool_connections_max", "Size of the connection pool.", ["pool"], multiprocess_mode="livesum")
POOL_WAITING = Gauge(
    "db_pool_requests_waiting", "Requests waiting for a pooled connection.", ["pool"], multiprocess_mode="livesum"
)
GATE_WAITING = Gauge(
    "product_gate_requests_waiting",
    "Orders and cancellations waiting in the worker for a product's next transaction (queued, or for an earlier"
    " order or request with the same Idempotency-Key to be decided).",
    multiprocess_mode="livesum",
)

# Events (the outbox relay). Every relay of every worker reads the backlog; the max of the live ones is the truth.
EVENTS_PENDING = Gauge(
    "orders_events_pending",
    "Events in the outbox not yet published: exact up to 1,000, the planner's estimate beyond.",
    multiprocess_mode="livemax",
)
EVENTS_OLDEST_PENDING_AGE = Gauge(
    "orders_events_oldest_pending_age_seconds",
    "Age of the oldest event due for publishing, those waiting out a retry back-off aside (0 when none is).",
    multiprocess_mode="livemax",
)
EVENTS_STANDBY_WAIT = Histogram(
    "orders_events_standby_wait_seconds",
    "Time a batch of events waited for EVENTS_AWAIT_STANDBYS standbys to flush their orders' commits.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
EVENTS_PUBLISHED = Counter("orders_events_published_total", "Events published and confirmed by the broker.", ["type"])
for _type in ("orders.order.placed", "orders.order.cancelled"):
    EVENTS_PUBLISHED.labels(type=_type)
EVENTS_PUBLISH_FAILURES = Counter(
    "orders_events_publish_failures_total",
    "Failures to publish events, by reason: per event the broker refused (nacked: a queue full with reject-publish;"
    " unroutable: no queue bound for its type), both tried again after a back-off; per failed attempt to reach"
    " the broker (unreachable), to have a batch confirmed in time (timeout), or a bug (unexpected).",
    ["reason"],
)
PUBLISH_FAILURE_REASONS = ("nacked", "unroutable", "unreachable", "timeout", "unexpected")
for _reason in PUBLISH_FAILURE_REASONS:
    EVENTS_PUBLISH_FAILURES.labels(reason=_reason)

READS = Counter(
    "orders_reads_total",
    "Reads of a user's orders, by the server that answered (primary or replica) and why: no_replica (none"
    " configured), caught_up (the replica has replayed all the primary had flushed), within_lag (it is behind by"
    " at most DB_READ_MAX_LAG_MS); user_write_pending (it has not replayed the user's last write yet), lagging (past"
    " the bound), replica_unavailable (down, or failing: the replicas are left alone for a few seconds),"
    " not_a_replica (a replica promoted), primary_in_recovery (a failover under way).",
    ["target", "reason"],
)
REPLICA_REASONS = ("caught_up", "within_lag")
PRIMARY_REASONS = (
    "no_replica",
    "user_write_pending",
    "lagging",
    "replica_unavailable",
    "not_a_replica",
    "primary_in_recovery",
)
for _reason in REPLICA_REASONS:
    READS.labels(target="replica", reason=_reason)
for _reason in PRIMARY_REASONS:
    READS.labels(target="primary", reason=_reason)
REPLICA_LAG = Gauge(
    "orders_db_replica_lag_seconds",
    "How far behind the primary the replica of the last read was: 0 when it had replayed all the primary had"
    " flushed, else the age of the last transaction it replayed.",
    multiprocess_mode="livemax",
)
DB_TIMELINE = Gauge(
    "orders_db_timeline",
    "The PostgreSQL timeline of the primary, read by the readiness check: each failover (promotion) raises it.",
    multiprocess_mode="livemax",
)
# Identity (AUTH_MODE=jwt): every refused bearer token by reason, and the JWKS fetches.
AUTH_REFUSALS = Counter(
    "orders_auth_refusals_total",
    "Requests refused by the bearer-token check (AUTH_MODE=jwt), by reason: 401s, and signing_keys_unavailable,"
    " the 503 of a token whose key the service has not got and cannot fetch.",
    ["reason"],
)
AUTH_REFUSALS_BY_REASON = {
    reason: AUTH_REFUSALS.labels(reason=reason) for reason in (*get_args(AuthRefusalReason), SIGNING_KEYS_UNAVAILABLE)
}
AUTH_JWKS_FETCHES = Counter(
    "orders_auth_jwks_fetches_total",
    "Fetches of AUTH_JWKS_URL by outcome (failed: the cached keys stay in use).",
    ["outcome"],
)
AUTH_JWKS_FETCHES_BY_OUTCOME = {outcome: AUTH_JWKS_FETCHES.labels(outcome=outcome) for outcome in ("ok", "failed")}
