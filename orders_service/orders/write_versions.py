"""Each user's write version (``user_writes``): the statements that change a user's orders bump it in their own
transaction when read replicas are configured, and ``read_routing`` reads a replica only once it has replayed it."""

from __future__ import annotations


def bump_write_versions(owners: str) -> str:
    """A CTE that bumps the version of each user ``owners`` (a query of one column, duplicates allowed) names.

    The users' rows are locked in user id order, so that two batches that share users never
    deadlock; it is the last lock a statement takes (after its products and orders), so nobody
    holds it while waiting for another row.
    """
    return f"""bumped_versions AS (
        INSERT INTO {{orders}}.user_writes AS w (user_id, version)
        SELECT DISTINCT owners.user_id, 1 FROM ({owners}) AS owners(user_id) ORDER BY owners.user_id
        ON CONFLICT (user_id) DO UPDATE SET version = w.version + 1
    )"""
