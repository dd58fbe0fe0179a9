"""The read path's SQL: one order, and a user's orders a page at a time, each with its items, in SQLAlchemy Core
compiled once (``Statement``). The statements that change orders and stock are in ``place_sql`` and ``cancel_sql``."""

from __future__ import annotations

from typing import Any, cast

from sqlalchemy import BigInteger, DateTime, Integer, String, Table, bindparam, select, tuple_
from sqlalchemy.sql import Select

from orders_service.db.models import Order
from orders_service.db.statements import Statement, TextStatement
from orders_service.orders.order_rows import ORDER_COLUMNS, items_json

_orders = cast("Table", Order.__table__)
_owner = bindparam("owner", type_=String)
_newest_first = (_orders.c.created_at.desc(), _orders.c.id.desc())


def _order_select() -> Select[Any]:
    return select(*ORDER_COLUMNS, items_json(_orders.c.id))


GET_ORDER = Statement(
    "get_order",
    _order_select().where(_orders.c.id == bindparam("order_id", type_=BigInteger), _orders.c.user_id == _owner),
)
FIRST_PAGE = Statement(
    "first_page",
    _order_select()
    .where(_orders.c.user_id == _owner)
    .order_by(*_newest_first)
    .limit(bindparam("limit", type_=Integer)),
)
NEXT_PAGE = Statement(
    "next_page",
    _order_select()
    .where(
        _orders.c.user_id == _owner,
        tuple_(_orders.c.created_at, _orders.c.id)
        < tuple_(
            bindparam("after_created_at", type_=DateTime(timezone=True)),
            bindparam("after_id", type_=BigInteger),
        ),
    )
    .order_by(*_newest_first)
    .limit(bindparam("limit", type_=Integer)),
)

# Read-your-writes with replicas (``read_routing``): the user's write version and how far the primary's WAL is
# flushed (NULL on a server in recovery: a failover under way), and on a replica the same version, how far it has
# replayed (NULL on a server not in recovery) and how long ago the last transaction it replayed committed.
PRIMARY_POSITION = TextStatement(
    "primary_position",
    "SELECT (SELECT w.version FROM {orders}.user_writes AS w WHERE w.user_id = %(owner)s::varchar),"
    " CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_flush_lsn()::text END",
)
REPLICA_POSITION = TextStatement(
    "replica_position",
    "SELECT (SELECT w.version FROM {orders}.user_writes AS w WHERE w.user_id = %(owner)s::varchar),"
    " pg_last_wal_replay_lsn()::text,"
    " extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())::float8",
)
