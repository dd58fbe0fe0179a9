"""Idempotency keys past their retention: the Advanced-Alchemy repository that purges them, a batch at a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from orders_service.config import Settings
from orders_service.db.engine import sqlalchemy_config
from orders_service.db.models import IdempotencyKey

PURGE_KEYS_BATCH = 1000


class IdempotencyKeyRepository(SQLAlchemyAsyncRepository[IdempotencyKey]):
    model_type = IdempotencyKey

    async def delete_oldest_before(self, cutoff: datetime, limit: int) -> int:
        """Delete up to ``limit`` keys created before ``cutoff`` (the oldest first); orders are untouched.

        The repository's ``delete_where`` returns every row it deleted, as a model instance: bounded
        by ``limit``, a purge of millions of keys holds a thousand at a time, not all of them.
        """
        oldest = (
            select(IdempotencyKey.user_id, IdempotencyKey.key)
            .where(IdempotencyKey.created_at < cutoff)
            .order_by(IdempotencyKey.created_at)
            .limit(limit)
        )
        deleted = await self.delete_where(tuple_(IdempotencyKey.user_id, IdempotencyKey.key).in_(oldest))
        return len(deleted)


async def purge_keys_older_than(settings: Settings, older_than_hours: int, *, batch: int = PURGE_KEYS_BATCH) -> int:
    """Delete the keys created over ``older_than_hours`` ago, ``batch`` per transaction; orders stay. The count."""
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    engine = sqlalchemy_config(settings).get_engine()
    total = 0
    try:
        async with AsyncSession(engine, expire_on_commit=False) as session:
            # Unwrapped: Advanced-Alchemy would report a refused connection as an IntegrityError, and the
            # command's one-line failure report reads the driver's own error.
            repository = IdempotencyKeyRepository(session=session, wrap_exceptions=False)
            while True:
                deleted = await repository.delete_oldest_before(cutoff, batch)
                await session.commit()  # a short transaction per batch: no long lock on the keys
                total += deleted
                if deleted < batch:
                    return total
    finally:
        await engine.dispose()
