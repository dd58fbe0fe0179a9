"""``/orders``: place an order, list the caller's orders."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from litestar import Controller, get, post
from litestar.di import NamedDependency, Provide
from litestar.params import JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from orders_service.guards import GATEWAY_USER_SCHEME, User, provide_user, require_json_body, require_user
from orders_service.schemas import OrderCreate, OrderCreateDTO, OrderRead
from orders_service.services import OrderService


async def provide_order_service(db_session: NamedDependency[AsyncSession]) -> AsyncGenerator[OrderService]:
    yield OrderService(db_session)


class OrderController(Controller):
    path = "/orders"
    tags = ["orders"]
    guards = [require_user]
    dependencies = {
        "user": Provide(provide_user, sync_to_thread=False),
        "orders": Provide(provide_order_service),
    }
    security = [{GATEWAY_USER_SCHEME: []}]

    @post(
        status_code=200,
        guards=[require_json_body],
        dto=OrderCreateDTO,
        return_dto=None,
        operation_id="placeOrder",
        summary="Place an order",
    )
    async def place_order(
        self, data: JSONBody[OrderCreate], user: NamedDependency[User], orders: NamedDependency[OrderService]
    ) -> OrderRead:
        """Reserve stock for every line and record the order, all or nothing."""
        return await orders.place_order(user.id, data.items)

    @get("/me", operation_id="listMyOrders", summary="List my orders")
    async def list_my_orders(
        self, user: NamedDependency[User], orders: NamedDependency[OrderService]
    ) -> list[OrderRead]:
        """The caller's orders, newest first, with their items."""
        return await orders.list_orders(user.id)
