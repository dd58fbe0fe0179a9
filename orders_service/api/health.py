"""Liveness and readiness probes."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from litestar import Controller, Response
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec

from orders_service.api.get_and_head import get_and_head
from orders_service.api.problem_details import RETRY_AFTER_SECONDS
from orders_service.db.readiness_probe import ReadinessProbe
from orders_service.events.relay_in_serve import RelayInServe
from orders_service.lifecycle.leaving import is_leaving


class Health(msgspec.Struct, omit_defaults=True):
    status: Annotated[Literal["ok", "unavailable"], msgspec.Meta(examples=["ok"])]
    reason: Annotated[
        str | None,
        msgspec.Meta(
            description="Why the instance is not ready (503 only).",
            examples=['table_missing: relation "catalog.products" does not exist'],
        ),
    ] = None
    events: Annotated[
        str | None,
        msgspec.Meta(
            description="The events relay of the worker that answered: `disabled: AMQP_URL not set`, `publishing` "
            "(it holds the lease), `standby` (another relay publishes), `broker unreachable`, `database unavailable`, "
            "`publishing; the broker refuses some events (retried after a back-off)`, `failing (unexpected error)`, "
            "`starting`, or published by a separate relay. Informative: it never makes readiness fail.",
            examples=["publishing"],
        ),
    ] = None


LIVE = Health("ok")
LEAVING = "shutting_down: this replica got SIGTERM and stops after SHUTDOWN_GRACE_SECONDS"


class HealthController(Controller):
    path = "/health"
    tags = ["health"]

    @get_and_head(
        operation_id="readiness",
        summary="Readiness: the database answers and has the service's tables",
        responses={503: ResponseSpec(data_container=Health, description="Not ready; `reason` says why.")},
    )
    async def readiness(
        self, readiness: NamedDependency[ReadinessProbe], events: NamedDependency[RelayInServe]
    ) -> Response[Health]:
        """200 when the database answers within ``HEALTH_TIMEOUT`` on a connection of its own, else 503 and why.

        Concurrent probes share one check, so the answer may be up to a quarter of a second old.
        """
        if is_leaving():  # SIGTERM: the load balancer must stop sending requests here (lifecycle/graceful_server.py)
            return Response(
                Health("unavailable", LEAVING, events=events.state),
                status_code=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        unavailable = await readiness.outcome()
        if unavailable is not None:
            reason = f"{unavailable.cause}: {unavailable.context}" if unavailable.context else unavailable.cause
            return Response(
                Health("unavailable", reason, events=events.state),
                status_code=503,
                headers={"Retry-After": RETRY_AFTER_SECONDS},
            )
        return Response(Health("ok", events=events.state))

    @get_and_head("/live", operation_id="liveness", summary="Liveness: the process serves requests")
    async def liveness(self) -> Health:
        return LIVE
