"""Where a user's orders are read: a read replica that has replayed every write of that user, else the primary.

Read-your-writes across every instance of the service, with no help from the client: the
statements that change a user's orders bump the user's version (``write_versions``) on the
primary, in their own transaction. A read asks the primary for that version (one index lookup)
while it reads the replica, the replica's own version of the user and its position coming first
in the same round trip; the replica's answer is used when its version is the primary's (every
write of the user replayed) and it is at most ``DB_READ_MAX_LAG_MS`` behind. Otherwise, or when
the replica fails or takes over ``REPLICA_ANSWER_SECONDS``, the read runs on the primary: a replica
down, frozen or lagging costs a round trip (at most that second), never an error. After a replica
failure, reads go straight to the primary for a few seconds.

Cost to the primary of a read served by a replica: that one-row lookup instead of the read.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Sequence
from typing import Any

from orders_service.db.statements import Step
from orders_service.db.transactions import Rows, StatementFailed, TransactionRunner
from orders_service.db.unavailable import DatabaseUnavailable
from orders_service.observability import metrics
from orders_service.orders.read_sql import PRIMARY_POSITION, REPLICA_POSITION

logger = logging.getLogger(__name__)

REPLICA_REST_SECONDS = 5.0  # after a replica failure, reads skip the replicas this long
REPLICA_SHARE_OF_BUDGET = 0.5  # a replica that does not answer leaves the primary the rest of the request's budget
# A replica that has not answered a read this long (a frozen network, an overloaded server) is as good as down: the
# primary reads instead. A page takes milliseconds; without it a frozen replica would hold each read for half of
# the request's budget (16 s by default).
REPLICA_ANSWER_SECONDS = 1.0


def lsn(text: str) -> int:
    """A ``pg_lsn`` as text (``16/B374D848``) as a number."""
    high, low = text.split("/")
    return (int(high, 16) << 32) | int(low, 16)


class ReadRouter:
    def __init__(self, primary: TransactionRunner, replica: TransactionRunner | None, *, max_lag: float) -> None:
        self.primary = primary
        self.replica = replica
        self.max_lag = max_lag
        self._resting_until = -math.inf

    @property
    def replicated(self) -> bool:
        """Whether reads may go to a replica: the writes must then bump the users' versions."""
        return self.replica is not None

    async def read(self, user_id: str, steps: Sequence[Step]) -> list[Rows]:
        """Run the read-only ``steps`` of ``user_id``'s orders where they see all of the user's writes."""
        if self.replica is None:
            metrics.READS.labels(target="primary", reason="no_replica").inc()
            return await self.primary.run(steps, writes=False)
        loop = asyncio.get_running_loop()
        deadline = self.primary.deadline()
        if loop.time() < self._resting_until:
            return await self._on_primary(steps, "replica_unavailable", deadline)
        replica_deadline = min(
            deadline, loop.time() + min(self.primary.budget * REPLICA_SHARE_OF_BUDGET, REPLICA_ANSWER_SECONDS)
        )
        on_replica = asyncio.create_task(
            self.replica.run(
                [Step(REPLICA_POSITION, {"owner": user_id}), *steps], writes=False, deadline=replica_deadline
            )
        )
        try:
            ((primary_position,),) = await self.primary.run(
                [Step(PRIMARY_POSITION, {"owner": user_id})], writes=False, deadline=deadline
            )
        except BaseException:
            on_replica.cancel()
            await asyncio.gather(on_replica, return_exceptions=True)
            raise
        try:
            replica_rows = await on_replica
        except (DatabaseUnavailable, StatementFailed) as exc:
            if loop.time() >= self._resting_until:
                logger.warning("read replica failed, reads go to the primary for %.0f s: %s", REPLICA_REST_SECONDS, exc)
            self._resting_until = loop.time() + REPLICA_REST_SECONDS
            return await self._on_primary(steps, "replica_unavailable", deadline)
        ((replica_position,), *rows) = replica_rows
        reason = self._verdict(primary_position, replica_position)
        if reason not in metrics.REPLICA_REASONS:
            return await self._on_primary(steps, reason, deadline)
        metrics.READS.labels(target="replica", reason=reason).inc()
        return rows

    def _verdict(self, primary: tuple[Any, ...], replica: tuple[Any, ...]) -> str:
        """Why the replica's answer is used (``REPLICA_REASONS``) or not."""
        primary_version, flushed = primary
        replica_version, replayed, replay_age = replica
        if flushed is None:
            return "primary_in_recovery"
        if replayed is None:
            return "not_a_replica"
        if replica_version != primary_version:
            return "user_write_pending"
        if lsn(replayed) >= lsn(flushed):
            metrics.REPLICA_LAG.set(0)
            return "caught_up"
        lag = math.inf if replay_age is None else max(0.0, replay_age)  # None: it has replayed no transaction yet
        metrics.REPLICA_LAG.set(lag)
        return "within_lag" if lag <= self.max_lag else "lagging"

    async def _on_primary(self, steps: Sequence[Step], reason: str, deadline: float) -> list[Rows]:
        metrics.READS.labels(target="primary", reason=reason).inc()
        return await self.primary.run(steps, writes=False, deadline=deadline)
