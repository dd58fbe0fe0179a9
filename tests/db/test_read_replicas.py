"""Reads from a streaming replica with read-your-writes (``DB_READ_HOSTS``), the replica's replay held back by
``recovery_min_apply_delay``.

Two instances of the service (two Granian servers, as two replicas behind the Gateway) share nothing but the
database: users
place and cancel orders through one and read through the other. Every user sees each of their acknowledged orders
(and cancellations) at once, whatever the replica's lag; the other users' reads come from the replica while it is
within ``DB_READ_MAX_LAG_MS``, from the primary past it; a stopped replica costs no error. What each read returned
is checked against the primary's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from orders_service.config import Settings
from orders_service.orders.read_routing import REPLICA_ANSWER_SECONDS
from tests.conftest import Catalog
from tests.support.database import ProvisionedDatabase
from tests.support.faults import freezable_proxy
from tests.support.granian import GranianServer, start_granian
from tests.support.replication import HOST, ReplicatedPostgres, replicated_postgres
from tests.support.scrape import scrape

Client = httpx.AsyncClient
PRODUCTS = list(range(1, 11))
WRITERS = [f"writer-{n}" for n in range(16)]
READERS = [f"reader-{n}" for n in range(16)]
MAX_LAG_MS = 1_000


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicatedPostgres]:
    with replicated_postgres(synchronous=False) as pair:
        yield pair


@pytest.fixture(scope="module")
def replicated(pair: ReplicatedPostgres) -> Iterator[ProvisionedDatabase]:
    with pair.provisioned() as database:
        pair.add_products(database, PRODUCTS, 1_000_000)
        yield database


def service_settings(database: ProvisionedDatabase, pair: ReplicatedPostgres, *, replica_port: int = 0) -> Settings:
    return Settings.from_env(
        {
            **database.runtime.as_env(),
            "DB_READ_HOSTS": f"{HOST}:{replica_port or pair.standby.port}",
            "DB_READ_MAX_LAG_MS": str(MAX_LAG_MS),
            "EVENTS_RELAY_IN_SERVE": "false",
        }
    )


@pytest.fixture(scope="module")
def servers(
    replicated: ProvisionedDatabase, pair: ReplicatedPostgres, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GranianServer, GranianServer]]:
    """Two instances of the service with the replica configured: the first takes orders, the second answers reads."""
    settings = service_settings(replicated, pair)
    with contextlib.ExitStack() as stack:
        started = []
        for name in ("writes", "reads"):
            metrics_dir: Path = tmp_path_factory.mktemp(name) / "metrics"
            metrics_dir.mkdir()
            started.append(stack.enter_context(start_granian(settings, workers=1, metrics_dir=metrics_dir)))
        yield started[0], started[1]


@pytest.fixture
async def instances(servers: tuple[GranianServer, GranianServer]) -> AsyncIterator[tuple[Client, Client]]:
    limits = httpx.Limits(max_connections=len(WRITERS) + len(READERS))
    async with (
        httpx.AsyncClient(base_url=servers[0].base_url, limits=limits, timeout=30) as writes,
        httpx.AsyncClient(base_url=servers[1].base_url, limits=limits, timeout=30) as reads,
    ):
        yield writes, reads


def reads_counted(server: GranianServer) -> dict[tuple[str, str], float]:
    """``orders_reads_total`` by (target, reason), from the instance's /metrics."""
    return {
        (dict(labels)["target"], dict(labels)["reason"]): value
        for (name, labels), value in scrape(server).items()
        if name == "orders_reads_total"
    }


def since(server: GranianServer, before: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    now = reads_counted(server)
    return {key: value - before.get(key, 0.0) for key, value in now.items() if value != before.get(key, 0.0)}


def truth(pair: ReplicatedPostgres, database: ProvisionedDatabase, user: str) -> dict[int, str]:
    """The user's orders on the primary: id -> status."""
    admin = database.admin
    with pair.primary.connect(admin.db_name) as connection:
        rows = connection.execute(
            f"SELECT id, status FROM {admin.db_schema}.orders WHERE user_id = %s", [user]
        ).fetchall()
    return {int(order_id): str(status) for order_id, status in rows}


async def place(client: Client, user: str, rng: random.Random) -> dict[str, Any]:
    products = rng.sample(PRODUCTS, rng.randint(1, 3))
    items = [{"product_id": product, "qty": rng.randint(1, 3)} for product in products]
    response = await client.post("/orders", json={"items": items}, headers={"X-User": user})
    assert response.status_code == 200, response.text
    return dict(response.json())


async def listed(client: Client, user: str) -> dict[int, str]:
    response = await client.get("/orders/me?limit=100", headers={"X-User": user})
    assert response.status_code == 200, response.text
    return {order["id"]: order["status"] for order in response.json()}


async def write_then_read(
    writes: Client, reads: Client, user: str, *, mine: dict[int, str], seconds: float, seed: int
) -> int:
    """Place (and now and then cancel) orders through one instance and read them back through the other at once:
    each read shows every order and cancellation so far (``mine``: the user's orders before). The number of orders
    placed."""
    rng = random.Random(seed)
    mine = dict(mine)
    placed = 0
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        order = await place(writes, user, rng)
        mine[order["id"]] = "placed"
        placed += 1
        got = await reads.get(f"/orders/{order['id']}", headers={"X-User": user})
        assert got.status_code == 200, f"{user} cannot read its order {order['id']}: {got.status_code} {got.text}"
        if rng.random() < 0.3:
            cancelled = await writes.post(f"/orders/{order['id']}/cancel", headers={"X-User": user})
            assert cancelled.status_code == 200, cancelled.text
            mine[order["id"]] = "cancelled"
        assert await listed(reads, user) == mine, f"{user} does not see its own writes"
    return placed


async def read_repeatedly(
    reads: Client, users: list[str], expected: dict[str, dict[int, str]], until: asyncio.Event
) -> int:
    """Each of ``users`` (who do not write meanwhile) lists their orders until ``until``: always all of them."""
    count = 0
    while not until.is_set():
        for user in users:
            assert await listed(reads, user) == expected[user], f"{user}'s orders read wrong"
            count += 1
    return count


async def readers_while_writers_write(
    writes: Client, reads: Client, pair: ReplicatedPostgres, database: ProvisionedDatabase, seconds: float
) -> tuple[int, int]:
    """READERS list their (unchanging) orders while WRITERS write and read their own for ``seconds``; (orders
    placed, reads)."""
    expected = {user: truth(pair, database, user) for user in READERS}
    before = {user: truth(pair, database, user) for user in WRITERS}
    writers_done = asyncio.Event()

    async def writers() -> int:
        try:
            placed = await asyncio.gather(
                *(
                    write_then_read(writes, reads, user, mine=before[user], seconds=seconds, seed=seed)
                    for seed, user in enumerate(WRITERS)
                )
            )
        finally:
            writers_done.set()
        return sum(placed)

    placed, read = await asyncio.gather(writers(), read_repeatedly(reads, READERS, expected, writers_done))
    return placed, read


async def readers_have_orders(writes: Client, pair: ReplicatedPostgres) -> None:
    rng = random.Random(99)
    for user in READERS:
        await place(writes, user, rng)
    await asyncio.to_thread(pair.wait_until_replayed)


async def test_every_user_reads_their_own_writes_at_once_while_others_read_the_lagging_replica(
    instances: tuple[Client, Client],
    servers: tuple[GranianServer, GranianServer],
    pair: ReplicatedPostgres,
    replicated: ProvisionedDatabase,
) -> None:
    writes, reads = instances
    await readers_have_orders(writes, pair)
    pair.set_apply_delay(300)
    before = reads_counted(servers[1])
    placed, read = await readers_while_writers_write(writes, reads, pair, replicated, seconds=3)
    counted = since(servers[1], before)
    print(f"\nreplica 300 ms behind: {placed} orders written and read back at once, {read} reads of others: {counted}")
    for user in WRITERS:
        assert truth(pair, replicated, user)
    # The writers' reads right after their writes could not use the replica: it had not replayed them.
    assert counted.get(("primary", "user_write_pending"), 0) >= len(WRITERS)
    # The readers' came from the replica: behind, but within the bound.
    assert counted.get(("replica", "within_lag"), 0) + counted.get(("replica", "caught_up"), 0) >= read / 2
    # The bound is an upper bound (the age of the last transaction replayed): after a pause in the writes, a read
    # may count a quiet second as lag. Rarely.
    replica_reads = counted.get(("replica", "within_lag"), 0) + counted.get(("replica", "caught_up"), 0)
    assert counted.get(("primary", "lagging"), 0) <= replica_reads / 10


async def test_reads_go_to_the_primary_when_the_replica_lags_past_the_bound(
    instances: tuple[Client, Client],
    servers: tuple[GranianServer, GranianServer],
    pair: ReplicatedPostgres,
    replicated: ProvisionedDatabase,
) -> None:
    writes, reads = instances
    await readers_have_orders(writes, pair)
    pair.set_apply_delay(MAX_LAG_MS * 3)
    try:
        before = reads_counted(servers[1])
        placed, read = await readers_while_writers_write(writes, reads, pair, replicated, seconds=5)
        counted = since(servers[1], before)
    finally:
        pair.set_apply_delay(0)
    print(f"\nreplica {MAX_LAG_MS * 3} ms behind: {placed} orders, {read} reads of others: {counted}")
    # Within the bound for its first second (the last transaction it replayed was that recent), lagging after.
    assert counted.get(("primary", "lagging"), 0) > counted.get(("replica", "within_lag"), 0)


async def test_a_stopped_replica_costs_no_error(
    instances: tuple[Client, Client],
    servers: tuple[GranianServer, GranianServer],
    pair: ReplicatedPostgres,
    replicated: ProvisionedDatabase,
) -> None:
    writes, reads = instances
    await readers_have_orders(writes, pair)
    pair.stop_standby()
    try:
        before = reads_counted(servers[1])
        placed, read = await readers_while_writers_write(writes, reads, pair, replicated, seconds=2)
        counted = since(servers[1], before)
    finally:
        pair.start_standby()
    print(f"\nreplica stopped: {placed} orders, {read} reads of others, all answered: {counted}")
    assert counted.get(("primary", "replica_unavailable"), 0) >= placed
    assert not any(target == "replica" for target, _ in counted)


async def test_a_frozen_replica_costs_each_read_at_most_a_second_and_reads_come_back_to_it_once_it_answers(
    pair: ReplicatedPostgres, replicated: ProvisionedDatabase, tmp_path: Path
) -> None:
    """A replica behind a network that stops forwarding (no error ever arrives): reads answer from the primary
    within REPLICA_ANSWER_SECONDS, not after half of the request's budget; thawed, the replica serves again."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    with (
        freezable_proxy(pair.standby.endpoint) as network,
        start_granian(
            service_settings(replicated, pair, replica_port=network.port), workers=1, metrics_dir=metrics_dir
        ) as server,
    ):
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as reads:
            expected = {user: truth(pair, replicated, user) for user in READERS}
            assert await listed(reads, READERS[0]) == expected[READERS[0]]  # a pooled connection to the replica
            network.freeze()
            before = reads_counted(server)
            loop = asyncio.get_running_loop()
            slowest = 0.0
            for _ in range(3):
                for user in READERS:
                    started = loop.time()
                    assert await listed(reads, user) == expected[user]
                    slowest = max(slowest, loop.time() - started)
            frozen = since(server, before)
            network.thaw()

            async def replica_serves_again() -> bool:
                counted = since(server, before)
                await listed(reads, READERS[0])
                return since(server, before).get(("replica", "caught_up"), 0) + since(server, before).get(
                    ("replica", "within_lag"), 0
                ) > counted.get(("replica", "caught_up"), 0) + counted.get(("replica", "within_lag"), 0)

            deadline = loop.time() + 30
            while not await replica_serves_again():
                assert loop.time() < deadline, "the replica never served reads again after the thaw"
    print(f"\nreplica frozen: {3 * len(READERS)} reads all answered, slowest {slowest:.2f} s: {frozen}")
    assert frozen.get(("primary", "replica_unavailable"), 0) == 3 * len(READERS)
    # One read waits for the frozen replica (then the replicas rest), about a second: not half of the 32 s budget.
    assert REPLICA_ANSWER_SECONDS <= 1.0
    assert slowest < 2.5


async def test_without_replicas_writes_bump_no_version(client: AsyncTestClient[Litestar], catalog: Catalog) -> None:
    """No replica configured: no cost, neither the version's write nor the primary's probe."""
    catalog.add(1, stock=10)
    placed = await client.post("/orders", json={"items": [{"product_id": 1, "qty": 1}]}, headers={"X-User": "solo"})
    assert placed.status_code == 200
    cancelled = await client.post(f"/orders/{placed.json()['id']}/cancel", headers={"X-User": "solo"})
    assert cancelled.status_code == 200
    listed = await client.get("/orders/me", headers={"X-User": "solo"})
    assert [order["status"] for order in listed.json()] == ["cancelled"]
    assert catalog.scalar("SELECT count(*) FROM {orders}.user_writes") == 0
