"""The floor: the same create and list on the same stack with nothing else.

Granian + Litestar + msgspec + a psycopg async pool, hand-written SQL, server-side prepared
statements (psycopg's default threshold), no ORM, no metrics, no guard, no idempotency, no
fault handling. What a lean hand-written service costs; the product must stay within 10 % of it.

    granian --interface asgi --loop uvloop --workers N benchmarks.floor.app:app
    (environment: the product's DB_* variables, DB_SCHEMA, CATALOG_SCHEMA, DB_POOL_SIZE)
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import msgspec
from litestar import Litestar, Request, Response, get, post
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

SCHEMA = os.environ.get("DB_SCHEMA", "orders")
CATALOG = os.environ.get("CATALOG_SCHEMA", "catalog")

LOCK = f"SELECT id, price_cents, stock FROM {CATALOG}.products WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
RESERVE = (
    f"UPDATE {CATALOG}.products AS p SET stock = p.stock - l.qty "
    "FROM unnest(%s::int[], %s::int[]) AS l(id, qty) WHERE p.id = l.id"
)
INSERT = (
    f"WITH o AS (INSERT INTO {SCHEMA}.orders (user_id, total_cents) VALUES (%s, %s) RETURNING id, created_at), "
    f"i AS (INSERT INTO {SCHEMA}.order_items (order_id, product_id, qty, price_cents) "
    "SELECT o.id, l.product_id, l.qty, l.price_cents FROM o, unnest(%s::int[], %s::int[], %s::int[]) "
    "AS l(product_id, qty, price_cents)) SELECT id, created_at FROM o"
)
PAGE = (
    f"SELECT id, user_id, created_at, total_cents, status, cancelled_at FROM {SCHEMA}.orders "
    "WHERE user_id = %s ORDER BY created_at DESC, id DESC LIMIT %s"
)
ITEMS = (
    f"SELECT order_id, product_id, qty, price_cents FROM {SCHEMA}.order_items "
    "WHERE order_id = ANY(%s) ORDER BY order_id, id"
)


class Line(msgspec.Struct):
    product_id: int
    qty: int


class OrderIn(msgspec.Struct):
    items: list[Line]


class Item(msgspec.Struct):
    product_id: int
    qty: int
    price_cents: int


class OrderOut(msgspec.Struct):
    id: int
    user_id: str
    created_at: datetime
    total_cents: int
    status: str
    cancelled_at: datetime | None
    items: list[Item]


pool = AsyncConnectionPool(
    make_conninfo(
        host=os.environ.get("DB_HOST", "localhost"),
        port=os.environ.get("DB_PORT", "5432"),
        user=os.environ.get("DB_USER", "app"),
        password=os.environ.get("DB_PASS", "app"),
        dbname=os.environ.get("DB_NAME", "appdb"),
    ),
    min_size=int(os.environ.get("DB_POOL_SIZE", "10")),
    max_size=int(os.environ.get("DB_POOL_SIZE", "10")),
    open=False,
)


@asynccontextmanager
async def lifespan(_: Litestar) -> AsyncIterator[None]:
    await pool.open()
    yield
    await pool.close()


@post("/orders", status_code=200)
async def place_order(request: Request[Any, Any, Any], data: OrderIn) -> Response[OrderOut] | Response[dict[str, str]]:
    wanted: dict[int, int] = {}
    for line in data.items:
        wanted[line.product_id] = wanted.get(line.product_id, 0) + line.qty
    ids = sorted(wanted)
    user = request.headers["x-user"]
    async with pool.connection() as conn, conn.transaction():
        locked = await (await conn.execute(LOCK, [ids])).fetchall()
        if len(locked) != len(ids) or any(stock < wanted[pid] for pid, _, stock in locked):
            return Response({"detail": "rejected"}, status_code=400)
        qtys = [wanted[pid] for pid in ids]
        prices = [price for _, price, _ in locked]
        total = sum(q * p for q, p in zip(qtys, prices, strict=True))
        await conn.execute(RESERVE, [ids, qtys])
        order_id, created_at = await (await conn.execute(INSERT, [user, total, ids, qtys, prices])).fetchone()  # type: ignore[misc]
    items = [Item(pid, q, p) for pid, q, p in zip(ids, qtys, prices, strict=True)]
    return Response(OrderOut(order_id, user, created_at, total, "placed", None, items))


@get("/orders/me")
async def list_orders(request: Request[Any, Any, Any]) -> list[OrderOut]:
    user = request.headers["x-user"]
    async with pool.connection() as conn:
        orders = await (await conn.execute(PAGE, [user, 50])).fetchall()
        by_order: dict[int, list[Item]] = {order[0]: [] for order in orders}
        if orders:
            for order_id, product_id, qty, price in await (await conn.execute(ITEMS, [list(by_order)])).fetchall():
                by_order[order_id].append(Item(product_id, qty, price))
    return [
        OrderOut(order_id, user_id, created_at, total, status, cancelled_at, by_order[order_id])
        for order_id, user_id, created_at, total, status, cancelled_at in orders
    ]


@get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


app = Litestar([place_order, list_orders, health], lifespan=[lifespan], openapi_config=None)
