"""``/orders``: place, list, read and cancel the caller's orders."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, Response, post
from litestar.datastructures import ResponseHeader
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import HeaderParameter, JSONBody, PathParameter, QueryParameter

from orders_service.api.caller_guard import identify_caller
from orders_service.api.get_and_head import get_and_head
from orders_service.api.request_checks import (
    IDEMPOTENCY_KEY_HEADER,
    check_cancel_request,
    check_listing_query,
    check_order_request,
    check_order_url,
)
from orders_service.api.user_guard import GATEWAY_USER_SCHEME, User
from orders_service.db.models import IDEMPOTENCY_KEY_MAX_LENGTH
from orders_service.orders.cursor import MAX_CURSOR_LENGTH
from orders_service.orders.schemas import OrderCreate, OrderCreateDTO, OrderRead, ProblemDetails
from orders_service.orders.service import OrderService

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
REPLAY_HEADER = "Idempotent-Replayed"

IdempotencyKeyHeader = Annotated[
    str | None,
    HeaderParameter(
        name=IDEMPOTENCY_KEY_HEADER,
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX_LENGTH,
        pattern=r"^[\x20-\x7e]+$",
        description=(
            "Makes retries safe: the first request with a key places the order, a retry with the same key "
            "and body returns that order (header Idempotent-Replayed: true) without reserving again. "
            "Scoped to the X-User; 1-255 printable ASCII characters; kept at least 24 hours."
        ),
    ),
]
# 2**53 - 1: the largest id every JSON client reads exactly; identity ids never get near it. The route
# declares the parameter a string so that check_order_url sees its spelling (only plain decimal names an order).
OrderId = Annotated[int, PathParameter(ge=1, le=2**53 - 1, description="The order's id, in plain decimal.")]


def _problem(description: str) -> ResponseSpec:
    return ResponseSpec(
        data_container=ProblemDetails,
        description=description,
        media_type="application/problem+json",
        generate_examples=False,
    )


COMMON_ERRORS = {
    401: _problem("X-User missing or blank."),
    503: _problem(
        "The database could not serve the request (`reason` says why); retry after `Retry-After`. Nothing was "
        "written, except when `detail` says the outcome of a write is unknown: retry with the same Idempotency-Key."
    ),
}


BODY_ERRORS = {
    408: _problem("The body did not arrive within `BODY_READ_TIMEOUT` seconds; the connection is closed."),
    499: _problem(
        "The body ended early: the connection closed before its end (the client left: it reads no answer, the "
        "status is for the logs and metrics, as nginx's 499), or its chunked framing is broken. Nothing was written."
    ),
}
ORDER_ID_ERRORS = {
    400: _problem("An order id outside 1..2^53-1, or a bad X-User header."),
    404: _problem(
        "No such order for this user (missing or someone else's), or an id not spelled in plain decimal "
        "(`+1`, `01`, `1_000`, non-ASCII digits, a trailing slash)."
    ),
    **COMMON_ERRORS,
}
CANCEL_ERRORS = {
    **ORDER_ID_ERRORS,
    400: _problem("An order id outside 1..2^53-1, a bad X-User header, or a transfer coding other than chunked."),
    409: _problem("Restocking would push a product's stock beyond the largest integer; nothing changed."),
    413: _problem("A body (the operation takes none) larger than 64 KiB."),
    **BODY_ERRORS,
}


class OrderController(Controller):
    path = "/orders"
    tags = ["orders"]
    guards = [identify_caller]
    security = [{GATEWAY_USER_SCHEME: []}]

    @post(
        status_code=200,
        before_request=check_order_request,
        dto=OrderCreateDTO,
        return_dto=None,
        operation_id="placeOrder",
        summary="Place an order",
        response_headers=[
            ResponseHeader(
                name=REPLAY_HEADER,
                value="true",  # documentation only: gives the header its schema (a string)
                description="`true` when this response replays the order an earlier request with the same "
                "Idempotency-Key placed; absent otherwise.",
                documentation_only=True,
                required=False,
            )
        ],
        responses={
            400: _problem(
                "Unknown product(s) (`reason: missing_product`), insufficient stock (`insufficient_stock`), "
                "a total beyond bigint (`total_too_large`), lines of one product whose quantities add up beyond "
                "2147483647 (`quantity_too_large`), an invalid body (`errors`), malformed JSON (a key given twice "
                "in an object included), a bad X-User / Idempotency-Key / Content-Type header (or one given twice), "
                "or a transfer coding other than chunked."
            ),
            413: _problem("The body is larger than 64 KiB."),
            415: _problem("The body is not declared as application/json, or declared with a Content-Encoding."),
            422: _problem("The Idempotency-Key was already used with a different body."),
            **BODY_ERRORS,
            **COMMON_ERRORS,
        },
    )
    async def place_order(
        self,
        request: Request[User, Any, Any],
        data: JSONBody[OrderCreate],
        orders: NamedDependency[OrderService],
        idempotency_key: IdempotencyKeyHeader = None,
    ) -> Response[OrderRead]:
        """Reserve stock for every line and record the order, all or nothing.

        Lines with the same `product_id` are combined. Each item keeps the product's price at order time.
        """
        order, replayed = await orders.place_order(request.user.id, data.items, idempotency_key)
        return Response(order, headers={REPLAY_HEADER: "true"} if replayed else None)

    @get_and_head(
        "/me",
        before_request=check_listing_query,
        operation_id="listMyOrders",
        summary="List my orders",
        response_headers=[
            ResponseHeader(
                name="Link",
                value='</orders/me?limit=50&cursor=WyIyMDI2LTExLTI1VDIxOjQ4OjMwLjM5ODA5NFoiLDJd>; rel="next"',
                description='`</orders/me?limit=…&cursor=…>; rel="next"` (RFC 8288, relative to the service) when '
                "there is a next page; absent on the last page.",
                documentation_only=True,
                required=False,
            )
        ],
        responses={
            400: _problem(
                "Bad `limit` (plain decimal digits, 1-200) or `cursor`, either given twice, or a bad X-User header."
            ),
            **COMMON_ERRORS,
        },
    )
    async def list_my_orders(
        self,
        request: Request[User, Any, Any],
        orders: NamedDependency[OrderService],
        limit: Annotated[
            int, QueryParameter(ge=1, le=MAX_PAGE_SIZE, description="Orders per page (1-200).")
        ] = DEFAULT_PAGE_SIZE,
        cursor: Annotated[
            str | None,
            QueryParameter(
                min_length=1,
                max_length=MAX_CURSOR_LENGTH,
                description='Opaque position of the next page, from the `Link: rel="next"` header.',
            ),
        ] = None,
    ) -> Response[list[OrderRead]]:
        """The caller's orders, newest first, with their items, one page at a time (keyset pagination)."""
        page, next_cursor = await orders.list_orders(request.user.id, limit, cursor)
        headers = None
        if next_cursor is not None:
            # Relative, so it stays right behind the Gateway whatever Host/scheme reached us.
            headers = {"Link": f'<{request.url.path}?limit={limit}&cursor={next_cursor}>; rel="next"'}
        return Response(page, headers=headers)

    @get_and_head(
        "/{order_id:str}",
        before_request=check_order_url,
        operation_id="getOrder",
        summary="Get one of my orders",
        responses=ORDER_ID_ERRORS,
    )
    async def get_order(
        self, request: Request[User, Any, Any], order_id: OrderId, orders: NamedDependency[OrderService]
    ) -> OrderRead:
        """The caller's order with its items."""
        return await orders.get_order(request.user.id, order_id)

    @post(
        "/{order_id:str}/cancel",
        before_request=check_cancel_request,
        status_code=200,
        operation_id="cancelOrder",
        summary="Cancel one of my orders",
        responses=CANCEL_ERRORS,
    )
    async def cancel_order(
        self, request: Request[User, Any, Any], order_id: OrderId, orders: NamedDependency[OrderService]
    ) -> OrderRead:
        """Cancel a placed order and put its units back in stock. Cancelling a cancelled order changes nothing."""
        return await orders.cancel_order(request.user.id, order_id)
