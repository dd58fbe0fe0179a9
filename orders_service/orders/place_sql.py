"""The one statement that places orders: one order alone, or several in arrival order (``ProductQueues``).

The orders are numbered 1..n in arrival order (``ord``); their lines are parallel arrays, each line
with ``held``: the units of its product that earlier orders of this worker, not in this statement
and not decided yet, may still take (they keep their place in line). One statement, one round trip:

1. ``stored``: orders whose Idempotency-Key already names a committed order of the same user
   (replays: nothing below locks or writes for them).
2. ``waited`` / ``unwaited`` / ``locked``: the products of the other orders, locked once by the lock
   rule (``lock_rule``: ``wait_for``'s row waited for first, the others skipped when held elsewhere).
3. ``verdict``: per order, what does not depend on the others: unknown and busy products, the total
   at the prices read under the lock.
4. ``walk``: the orders one by one in arrival order, against the units the orders before them left
   (``units``) and what the undecided ones before them may take (``held``, plus each line's own):

   - ``missing``: an unknown product (it wins over the rest);
   - ``short``: a line needs more than is left even if every undecided order before it failed;
   - ``busy``: a product another transaction holds: undecided, its units held for it;
   - ``too_large``: the total does not fit a bigint;
   - ``placed``: every line fits what is left after what the undecided orders before it may take;
   - ``held``: it fits only if an undecided order before it fails: undecided, its units held too.

5. One decrement per product for the placed orders, which are inserted in arrival order with their
   items (by product id), keys and outbox events; the new ids are matched to the orders by sorting
   both (a column default's ``nextval`` takes its values in the order of ``INSERT … SELECT … ORDER BY``,
   and the timeline above them is the same for the whole statement; SQLAlchemy's "insertmanyvalues"
   relies on the same for PostgreSQL).
6. ``tripwire``: the statement fails (and so writes nothing) unless it decremented exactly the
   products of the placed orders and left none below zero, whatever the catalog's constraints.

An Idempotency-Key is written only with its order, after every wait: a key is never held while
a row is waited for, and a rejected order writes nothing. If a twin committed the same key while
this statement waited for its row, the key's insert fails (``pk_idempotency_keys``) and the
transaction is run again (``TransactionRunner``): it then sees the stored key and replays it.

One row per order comes back, in arrival order: ord, state, missing, busy, short, total, prices,
order id, created at, the stored key's hash and order id, and the tripwire.
"""

from __future__ import annotations

from orders_service.db.models import ORDER_PLACED
from orders_service.db.statements import TextStatement
from orders_service.orders.lock_rule import other_products, product_exists, waited_product
from orders_service.orders.write_versions import bump_write_versions

PG_BIGINT_MAX = 2**63 - 1

_WANTED = "SELECT line.product_id FROM line"
_WAIT_FOR = "%(wait_for)s::integer"
_PLACED_OWNERS = "SELECT batch.owner FROM placed JOIN batch ON batch.ord = placed.ord"


def _place_orders(*, bump_versions: bool) -> TextStatement:
    """The statement; ``bump_versions``: it also bumps the write version of the users whose orders it places
    (``write_versions``: with read replicas)."""
    versions = f",\n    {bump_write_versions(_PLACED_OWNERS)}" if bump_versions else ""
    return TextStatement(
        "place_orders_versioned" if bump_versions else "place_orders",
        f"""
    WITH RECURSIVE batch AS (
        SELECT b.ord::integer AS ord, b.owner, b.key, b.request_hash
        FROM unnest(%(owners)s::varchar[], %(keys)s::varchar[], %(hashes)s::varchar[])
            WITH ORDINALITY AS b(owner, key, request_hash, ord)
    ),
    stored AS MATERIALIZED (
        SELECT batch.ord, k.request_hash, k.order_id
        FROM batch JOIN {{orders}}.idempotency_keys AS k ON k.user_id = batch.owner AND k.key = batch.key
        WHERE k.order_id IS NOT NULL
    ),
    line AS MATERIALIZED (
        SELECT l.ord::integer AS ord, l.product_id, l.qty, l.held
        FROM unnest(%(line_orders)s::integer[], %(line_products)s::integer[], %(line_qtys)s::integer[],
                    %(line_held)s::bigint[]) AS l(ord, product_id, qty, held)
        WHERE l.ord NOT IN (SELECT stored.ord FROM stored)
    ),
    {waited_product(_WANTED, _WAIT_FOR)},
    {other_products(_WANTED, _WAIT_FOR)},
    verdict AS MATERIALIZED (
        SELECT line.ord,
            array_agg(line.product_id ORDER BY line.product_id) FILTER (
                WHERE locked.id IS NULL AND NOT {product_exists("line.product_id")}
            ) AS missing,
            array_agg(line.product_id ORDER BY line.product_id) FILTER (
                WHERE locked.id IS NULL AND {product_exists("line.product_id")}
            ) AS busy,
            sum(line.qty::numeric * locked.price_cents) AS total,
            array_agg(locked.price_cents ORDER BY line.product_id) AS prices
        FROM line LEFT JOIN locked ON locked.id = line.product_id
        GROUP BY line.ord
    ),
    stock AS (
        SELECT coalesce(array_agg(locked.id ORDER BY locked.id), ARRAY[]::integer[]) AS ids,
            coalesce(array_agg(locked.stock::bigint ORDER BY locked.id), ARRAY[]::bigint[]) AS units
        FROM locked
    ),
    walk(ord, units, held, state, short) AS (
        SELECT 0, stock.units, array_fill(0::bigint, ARRAY[cardinality(stock.units)]), NULL::text, NULL::integer[]
        FROM stock
        UNION ALL
        SELECT walk.ord + 1,
            CASE WHEN decision.state = 'placed' THEN change.units ELSE walk.units END,
            CASE WHEN decision.state IN ('busy', 'held') THEN change.held ELSE walk.held END,
            decision.state,
            decision.short
        FROM walk CROSS JOIN stock
        LEFT JOIN verdict ON verdict.ord = walk.ord + 1
        CROSS JOIN LATERAL (
            SELECT array_agg(l.product_id ORDER BY l.product_id) FILTER (WHERE l.qty > walk.units[s.i]) AS short,
                coalesce(bool_and(l.qty <= walk.units[s.i] - walk.held[s.i] - l.held), false) AS fits
            FROM line AS l CROSS JOIN LATERAL (SELECT array_position(stock.ids, l.product_id) AS i) AS s
            WHERE l.ord = walk.ord + 1 AND s.i IS NOT NULL
        ) AS fit
        CROSS JOIN LATERAL (
            SELECT CASE
                    WHEN verdict.ord IS NULL THEN 'stored'
                    WHEN verdict.missing IS NOT NULL THEN 'missing'
                    WHEN fit.short IS NOT NULL THEN 'short'
                    WHEN verdict.busy IS NOT NULL THEN 'busy'
                    WHEN verdict.total > {PG_BIGINT_MAX} THEN 'too_large'
                    WHEN fit.fits THEN 'placed'
                    ELSE 'held'
                END AS state,
                fit.short
        ) AS decision
        CROSS JOIN LATERAL (
            SELECT array_agg(u.units - coalesce(l.qty, 0) ORDER BY u.i) AS units,
                array_agg(u.held + coalesce(l.qty, 0) ORDER BY u.i) AS held
            FROM unnest(walk.units, walk.held) WITH ORDINALITY AS u(units, held, i)
            LEFT JOIN line AS l ON l.ord = walk.ord + 1 AND l.product_id = stock.ids[u.i]
        ) AS change
        WHERE walk.ord < %(orders)s::integer
    ),
    accepted AS MATERIALIZED (
        SELECT walk.ord, verdict.total::bigint AS total, row_number() OVER (ORDER BY walk.ord) AS n
        FROM walk JOIN verdict ON verdict.ord = walk.ord
        WHERE walk.state = 'placed'
    ),
    taken AS (
        SELECT line.product_id, sum(line.qty) AS qty FROM line JOIN accepted ON accepted.ord = line.ord
        GROUP BY line.product_id
    ),
    reserved AS (
        UPDATE {{catalog}}.products AS p SET stock = p.stock - taken.qty FROM taken WHERE p.id = taken.product_id
        RETURNING p.id, p.stock
    ),
    new_orders AS (
        INSERT INTO {{orders}}.orders (user_id, total_cents)
        SELECT batch.owner, accepted.total FROM accepted JOIN batch ON batch.ord = accepted.ord
        ORDER BY accepted.ord
        RETURNING id, created_at
    ),
    placed AS MATERIALIZED (
        SELECT accepted.ord, numbered.id, numbered.created_at
        FROM (SELECT new_orders.id, new_orders.created_at, row_number() OVER (ORDER BY new_orders.id) AS n
              FROM new_orders) AS numbered
        JOIN accepted ON accepted.n = numbered.n
    ),
    new_items AS (
        INSERT INTO {{orders}}.order_items (order_id, product_id, qty, price_cents)
        SELECT placed.id, line.product_id, line.qty, locked.price_cents
        FROM placed JOIN line ON line.ord = placed.ord JOIN locked ON locked.id = line.product_id
        ORDER BY placed.id, line.product_id
    ),
    new_keys AS (
        INSERT INTO {{orders}}.idempotency_keys (user_id, key, request_hash, order_id)
        SELECT batch.owner, batch.key, batch.request_hash, placed.id
        FROM placed JOIN batch ON batch.ord = placed.ord
        WHERE batch.key IS NOT NULL
        ORDER BY batch.owner, batch.key
    ),
    placed_events AS (
        INSERT INTO {{orders}}.outbox (order_id, type)
        SELECT placed.id, '{ORDER_PLACED}' FROM placed ORDER BY placed.id
    ){versions},
    tripwire AS (
        SELECT CASE
            WHEN count(reserved.id) = (SELECT count(*) FROM taken) AND coalesce(min(reserved.stock), 0) >= 0 THEN 0
            ELSE concat('tripwire: stock taken from ', count(reserved.id), ' of ', (SELECT count(*) FROM taken),
                ' products, lowest left ', min(reserved.stock))::integer
        END AS ok
        FROM reserved
    )
    SELECT batch.ord, walk.state, verdict.missing, verdict.busy, walk.short, verdict.total, verdict.prices,
        placed.id, placed.created_at, stored.request_hash, stored.order_id, (SELECT tripwire.ok FROM tripwire)
    FROM batch
    LEFT JOIN stored ON stored.ord = batch.ord
    LEFT JOIN verdict ON verdict.ord = batch.ord
    LEFT JOIN walk ON walk.ord = batch.ord
    LEFT JOIN placed ON placed.ord = batch.ord
    ORDER BY batch.ord
    """,
    )


PLACE_ORDERS = _place_orders(bump_versions=False)
PLACE_ORDERS_VERSIONED = _place_orders(bump_versions=True)
