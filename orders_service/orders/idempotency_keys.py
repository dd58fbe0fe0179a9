"""Idempotency keys past their retention: the Advanced-Alchemy repository that purges them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import cast

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from sqlalchemy import Table, delete
from sqlalchemy.ext.asyncio import AsyncSession

from orders_service.config import Settings
from orders_service.db.engine import sqlalchemy_config
from orders_service.db.models import IdempotencyKey

_keys = cast("Table", IdempotencyKey.__table__)


class IdempotencyKeyRepository(SQLAlchemyAsyncRepository[IdempotencyKey]):
    model_type = IdempotencyKey

    async def delete_older_than(self, cutoff: datetime) -> int:
        """Delete keys created before ``cutoff``; orders are untouched. Returns how many were deleted."""
        result = await self.session.execute(delete(_keys).where(_keys.c.created_at < cutoff))
        return cast("int", result.rowcount)  # type: ignore[attr-defined]


async def purge_keys_older_than(settings: Settings, older_than_hours: int) -> int:
    """Delete the keys created over ``older_than_hours`` ago, in one transaction; orders stay. Returns the count."""
    cutoff = datetime.now(UTC) - timedelta(hours=older_than_hours)
    engine = sqlalchemy_config(settings).get_engine()
    try:
        async with AsyncSession(engine) as session:
            deleted = await IdempotencyKeyRepository(session=session).delete_older_than(cutoff)
            await session.commit()
            return deleted
    finally:
        await engine.dispose()
