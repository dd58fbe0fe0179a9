"""``DatabaseUnavailable``: the database could not serve a request now; every such fault becomes a 503."""

from __future__ import annotations

from orders_service.causes import UnavailableCause


class DatabaseUnavailable(Exception):
    """The database could not serve the request now (503). ``cause`` names why, for logs, metrics and clients.

    ``outcome_unknown`` is set when the connection was lost after a write was sent: the
    transaction may have committed, so the client must retry with its Idempotency-Key.
    ``connection_lost`` is set when a connection that was open broke while in use (the server
    ended the session, the network dropped it) before the deadline, as opposed to a connection
    that could not be opened or a database that did not answer in time: a new connection may
    well work.
    """

    DETAILS: dict[UnavailableCause, str] = {
        "database_unavailable": "The database is unavailable",
        "database_timeout": "The database did not answer in time",
        "read_only": "The database server reached accepts no writes (a standby, or a failover under way)",
        "lock_timeout": "A product or order was locked by another transaction for too long",
        "statement_timeout": "The database statement took too long",
        "pool_exhausted": "Every database connection of this instance is busy",
        "product_busy": "Too many requests are waiting for the same product",
        "queue_full": "Too many orders are waiting in this instance",
        "deadlock": "The transaction kept conflicting with other writers",
        "table_missing": "A table the service needs is missing",
    }

    def __init__(
        self,
        cause: UnavailableCause,
        *,
        outcome_unknown: bool = False,
        connection_lost: bool = False,
        context: str | None = None,
    ) -> None:
        self.cause: UnavailableCause = cause
        self.outcome_unknown = outcome_unknown
        self.connection_lost = connection_lost
        self.context = context
        super().__init__(f"{cause}: {context}" if context else cause)

    @property
    def detail(self) -> str:
        detail = self.DETAILS[self.cause]
        if self.context and self.cause == "table_missing":
            detail = f"{detail}: {self.context}"
        if self.outcome_unknown:
            return (
                f"{detail}; the connection was lost while the change was being committed, so it may or may not "
                "have been applied. Retry with the same Idempotency-Key to get the outcome."
            )
        return f"{detail}; the request did not complete and changed nothing. Retry later."
