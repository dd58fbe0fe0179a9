"""Several orders in one statement: the combined transaction of a flash sale (``OrderCombiner``).

The orders are numbered 1..n in arrival order (``ord``); their lines are three parallel arrays.
After ``CLAIM_KEYS`` (the same pipeline), one statement:

1. ``stored``: orders whose Idempotency-Key already names a committed order (replays; nothing else
   below touches them).
2. ``waited`` / ``unwaited``: every product of the other orders, locked once, in ascending id
   order: ``wait_for``'s rows waited for, the others skipped when another transaction holds them
   (as in ``PLACE_ORDER``: no hold-and-wait).
3. ``verdict``: per order, what does not depend on the others: unknown and busy products, the
   total at the prices read under the lock.
4. ``walk``: the orders one by one in arrival order, each against the stock the accepted orders
   before it left: an order is accepted when it has no unknown or busy product, its total fits
   a bigint and every line fits what is left; only then is its quantity taken off. A recursive
   query, as the decision of each order depends on those before it.
5. One decrement per product, the accepted orders inserted in arrival order with their items,
   keys linked (or released for the orders not placed, so that their keys can be retried) and
   their outbox events. The new ids are matched to the orders by sorting both (an identity column
   takes its values in the order of ``INSERT … SELECT … ORDER BY``; SQLAlchemy's "insertmanyvalues"
   relies on the same for PostgreSQL).

One row per order comes back, in arrival order, shaped like ``PLACE_ORDER``'s row.
"""

from __future__ import annotations

from orders_service.db.models import ORDER_PLACED
from orders_service.db.statements import TextStatement
from orders_service.orders.order_sql import PG_BIGINT_MAX

CLAIM_KEYS = TextStatement(
    "claim_idempotency_keys",
    """
    INSERT INTO {orders}.idempotency_keys (user_id, key, request_hash)
    SELECT claim.owner, claim.key, claim.request_hash
    FROM unnest(%(owners)s::varchar[], %(keys)s::varchar[], %(hashes)s::varchar[]) AS claim(owner, key, request_hash)
    WHERE claim.key IS NOT NULL
    ORDER BY claim.owner, claim.key
    ON CONFLICT (user_id, key) DO NOTHING
    """,
)

PLACE_ORDERS = TextStatement(
    "place_orders",
    f"""
    WITH RECURSIVE batch AS (
        SELECT b.owner, b.key, b.ord::integer AS ord
        FROM unnest(%(owners)s::varchar[], %(keys)s::varchar[]) WITH ORDINALITY AS b(owner, key, ord)
    ),
    stored AS MATERIALIZED (
        SELECT batch.ord, k.request_hash, k.order_id
        FROM batch JOIN {{orders}}.idempotency_keys AS k ON k.user_id = batch.owner AND k.key = batch.key
        WHERE k.order_id IS NOT NULL
    ),
    line AS MATERIALIZED (
        SELECT l.ord, l.product_id, l.qty
        FROM unnest(%(line_orders)s::integer[], %(line_products)s::integer[], %(line_qtys)s::integer[])
            AS l(ord, product_id, qty)
        WHERE l.ord NOT IN (SELECT stored.ord FROM stored)
    ),
    waited AS MATERIALIZED (
        SELECT p.id, p.price_cents, p.stock FROM {{catalog}}.products AS p
        WHERE p.id = ANY(%(wait_for)s::integer[]) AND p.id IN (SELECT line.product_id FROM line)
        ORDER BY p.id
        FOR NO KEY UPDATE
    ),
    unwaited AS MATERIALIZED (
        SELECT p.id, p.price_cents, p.stock FROM {{catalog}}.products AS p
        WHERE p.id IN (SELECT line.product_id FROM line) AND p.id <> ALL(%(wait_for)s::integer[])
            AND (SELECT count(*) FROM waited) >= 0
        ORDER BY p.id
        FOR NO KEY UPDATE SKIP LOCKED
    ),
    locked AS (SELECT * FROM waited UNION ALL SELECT * FROM unwaited),
    verdict AS MATERIALIZED (
        SELECT line.ord,
            array_agg(line.product_id ORDER BY line.product_id) FILTER (
                WHERE locked.id IS NULL
                AND NOT EXISTS (SELECT FROM {{catalog}}.products AS p WHERE p.id = line.product_id)
            ) AS missing,
            array_agg(line.product_id ORDER BY line.product_id) FILTER (
                WHERE locked.id IS NULL AND EXISTS (SELECT FROM {{catalog}}.products AS p WHERE p.id = line.product_id)
            ) AS busy,
            sum(line.qty::numeric * locked.price_cents) AS total,
            array_agg(locked.price_cents ORDER BY line.product_id) AS prices
        FROM line LEFT JOIN locked ON locked.id = line.product_id
        GROUP BY line.ord
    ),
    stock AS (SELECT array_agg(locked.id ORDER BY locked.id) AS ids, array_agg(locked.stock ORDER BY locked.id) AS units
              FROM locked),
    walk(ord, units, short, accepted) AS (
        SELECT 0, stock.units, NULL::integer[], NULL::boolean FROM stock
        UNION ALL
        SELECT walk.ord + 1,
            CASE WHEN step.accepted THEN step.units_after ELSE walk.units END,
            step.short,
            step.accepted
        FROM walk CROSS JOIN stock
        LEFT JOIN LATERAL (
            SELECT
                verdict.missing IS NULL AND verdict.busy IS NULL AND verdict.total <= {PG_BIGINT_MAX}
                    AND fits.short IS NULL AS accepted,
                fits.short,
                (SELECT array_agg(u.units - coalesce(l.qty, 0) ORDER BY u.i)
                 FROM unnest(walk.units) WITH ORDINALITY AS u(units, i)
                 LEFT JOIN line AS l ON l.ord = verdict.ord AND l.product_id = stock.ids[u.i]) AS units_after
            FROM verdict
            CROSS JOIN LATERAL (
                SELECT array_agg(l.product_id ORDER BY l.product_id) AS short
                FROM line AS l
                WHERE l.ord = verdict.ord AND walk.units[array_position(stock.ids, l.product_id)] < l.qty
            ) AS fits
            WHERE verdict.ord = walk.ord + 1
        ) AS step ON true
        WHERE walk.ord < %(orders)s::integer
    ),
    accepted AS MATERIALIZED (
        SELECT walk.ord, verdict.total::bigint AS total, row_number() OVER (ORDER BY walk.ord) AS n
        FROM walk JOIN verdict ON verdict.ord = walk.ord
        WHERE walk.accepted
    ),
    reserved AS (
        UPDATE {{catalog}}.products AS p SET stock = p.stock - taken.qty
        FROM (SELECT line.product_id, sum(line.qty) AS qty FROM line JOIN accepted ON accepted.ord = line.ord
              GROUP BY line.product_id) AS taken
        WHERE p.id = taken.product_id
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
    ),
    linked_keys AS (
        UPDATE {{orders}}.idempotency_keys AS k SET order_id = placed.id
        FROM placed JOIN batch ON batch.ord = placed.ord
        WHERE k.user_id = batch.owner AND k.key = batch.key AND k.order_id IS NULL
    ),
    released_keys AS (
        DELETE FROM {{orders}}.idempotency_keys AS k
        USING batch
        WHERE k.user_id = batch.owner AND k.key = batch.key AND k.order_id IS NULL
            AND batch.ord NOT IN (SELECT accepted.ord FROM accepted)
    ),
    placed_events AS (
        INSERT INTO {{orders}}.outbox (order_id, type)
        SELECT placed.id, '{ORDER_PLACED}' FROM placed ORDER BY placed.id
    )
    SELECT batch.ord, stored.ord IS NULL AS fresh, verdict.missing, verdict.busy, walk.short, verdict.total,
        verdict.prices, placed.id, placed.created_at, stored.request_hash, stored.order_id
    FROM batch
    LEFT JOIN stored ON stored.ord = batch.ord
    LEFT JOIN verdict ON verdict.ord = batch.ord
    LEFT JOIN walk ON walk.ord = batch.ord
    LEFT JOIN placed ON placed.ord = batch.ord
    ORDER BY batch.ord
    """,
)
