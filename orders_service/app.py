"""The Litestar application factory."""

from __future__ import annotations

from advanced_alchemy.extensions.litestar import SQLAlchemyPlugin
from litestar import Litestar
from litestar.di import Provide
from litestar.logging import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Components

from orders_service.config import Settings
from orders_service.controllers.health import HealthController
from orders_service.controllers.orders import OrderController
from orders_service.database import sqlalchemy_config
from orders_service.errors import IdempotencyKeyReused, OrderRejected, RestockOverflow, problem_details_plugin
from orders_service.guards import GATEWAY_USER_SCHEME, GATEWAY_USER_SECURITY
from orders_service.metrics import MetricsController, count_unrouted_response, prometheus_config

MAX_BODY_BYTES = 64 * 1024


def create_app(settings: Settings | None = None) -> Litestar:
    """Build the app for ``settings`` (default: from the environment). Opens no connection."""
    settings = settings or Settings.from_env()
    openapi = (
        OpenAPIConfig(
            title="Orders service",
            version="0.1.0",
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=Components(security_schemes={GATEWAY_USER_SCHEME: GATEWAY_USER_SECURITY}),
        )
        if settings.openapi_enabled
        else None
    )
    return Litestar(
        route_handlers=[OrderController, HealthController, MetricsController],
        dependencies={"settings": Provide(lambda: settings, sync_to_thread=False, use_cache=True)},
        plugins=[SQLAlchemyPlugin(config=sqlalchemy_config(settings)), problem_details_plugin()],
        middleware=[prometheus_config().middleware],
        before_send=[count_unrouted_response],
        openapi_config=openapi,
        logging_config=LoggingConfig(
            root={"level": "INFO", "handlers": ["queue_listener"]},
            log_exceptions="always",
            # Client errors are answered, not logged with a traceback.
            disable_stack_trace={
                400,
                401,
                403,
                404,
                405,
                409,
                413,
                415,
                422,
                OrderRejected,
                IdempotencyKeyReused,
                RestockOverflow,
            },
        ),
        # 100 lines fit in a few KiB; anything near this limit is not an order (413).
        request_max_body_size=MAX_BODY_BYTES,
        debug=False,
    )


app = create_app()
