"""Liveness and readiness probes."""

from __future__ import annotations

import asyncio

from litestar import Controller, MediaType, Response, get
from litestar.di import NamedDependency
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from orders_service.config import Settings


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get(operation_id="readiness", summary="Readiness: the database answers")
    async def readiness(
        self, db_engine: NamedDependency[AsyncEngine], settings: NamedDependency[Settings]
    ) -> Response[dict[str, str]]:
        """200 when the database answers within ``HEALTH_TIMEOUT`` seconds, else 503 with the reason."""
        try:
            async with asyncio.timeout(settings.health_timeout):
                async with db_engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
        except TimeoutError:
            return _unavailable(f"database did not answer within {settings.health_timeout}s")
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"; the reason is reported
            return _unavailable(f"database error: {type(exc).__name__}")
        return Response({"status": "ok"}, media_type=MediaType.JSON)

    @get("/live", operation_id="liveness", summary="Liveness: the process serves requests")
    async def liveness(self) -> dict[str, str]:
        return {"status": "ok"}


def _unavailable(reason: str) -> Response[dict[str, str]]:
    return Response({"status": "unavailable", "reason": reason}, status_code=503, media_type=MediaType.JSON)
