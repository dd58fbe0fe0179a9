"""The PostgreSQL timeline writes go to: a promotion (failover) always starts a new, higher one.

It is the first 8 hex digits of the WAL file name (``pg_walfile_name``, refused on a standby,
which takes no writes anyway). Order and event ids carry it (migration 0005) and readiness
reports it (``orders_db_timeline``).
"""

CURRENT_TIMELINE = "('x' || left(pg_walfile_name(pg_current_wal_insert_lsn()), 8))::bit(32)::bigint"
