"""The JWKS cache of one worker against a JWKS served over HTTP: fetched lazily, once at a time, rate-limited,
refreshed when old, and never a reason to refuse a good token while its key is cached."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from orders_service.auth.refusals import SigningKeysUnavailable
from orders_service.auth.remote_keys import RemoteKeys
from tests.support.jwt_issuer import Issuer, JwksServer, jwks_server

COOLDOWN, MAX_AGE = 5.0, 300.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.add_key("k1", "ES256")
    issuer.add_key("k2", "RS256")
    return issuer


@pytest.fixture
def served(issuer: Issuer) -> Iterator[JwksServer]:
    with jwks_server(issuer.jwks("k1")) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def remote(server: JwksServer, clock: FakeClock, *, fetch_timeout: float = 2.0) -> RemoteKeys:
    return RemoteKeys(server.url, fetch_timeout=fetch_timeout, cooldown=COOLDOWN, max_age=MAX_AGE, clock=clock)


async def test_nothing_is_fetched_until_a_key_is_needed_then_once(served: JwksServer, clock: FakeClock) -> None:
    keys = remote(served, clock)
    assert served.requests == 0
    found = await asyncio.gather(*(keys.find("k1") for _ in range(50)))
    assert all(key is not None and key.key_id == "k1" for key in found)
    assert served.requests == 1
    assert await keys.find("k1") is not None
    assert served.requests == 1


async def test_a_cached_key_verifies_while_the_jwks_is_down(served: JwksServer, clock: FakeClock) -> None:
    keys = remote(served, clock)
    assert await keys.find("k1") is not None
    served.down()
    clock.now += MAX_AGE + 1  # old: refreshed in the background, which fails
    assert await keys.find("k1") is not None
    await keys.settled()
    assert await keys.find("k1") is not None


async def test_an_unknown_key_with_the_jwks_never_reachable_is_unavailable(
    served: JwksServer, clock: FakeClock
) -> None:
    served.down()
    keys = remote(served, clock)
    with pytest.raises(SigningKeysUnavailable) as raised:
        await keys.find("k1")
    assert raised.value.retry_after == COOLDOWN
    clock.now += 2
    with pytest.raises(SigningKeysUnavailable) as raised:
        await keys.find("k1")
    assert raised.value.retry_after == 3


async def test_an_unknown_key_with_the_jwks_down_is_unavailable_not_unknown(
    served: JwksServer, clock: FakeClock
) -> None:
    keys = remote(served, clock)
    assert await keys.find("k1") is not None
    served.down()
    clock.now += COOLDOWN
    with pytest.raises(SigningKeysUnavailable):
        await keys.find("k2")
    served.up()
    served.document = {"keys": [*served.document["keys"]]}
    clock.now += COOLDOWN
    assert await keys.find("k2") is None  # reachable again, and it has no such key: unknown, for sure


async def test_a_new_kid_is_fetched_and_a_removed_one_dropped(
    served: JwksServer, clock: FakeClock, issuer: Issuer
) -> None:
    keys = remote(served, clock)
    assert await keys.find("k1") is not None
    served.document = issuer.jwks("k1", "k2")  # rotation: the new key published beside the old one
    clock.now += COOLDOWN
    assert await keys.find("k2") is not None
    assert served.requests == 2
    served.document = issuer.jwks("k2")  # the old key retired
    clock.now += MAX_AGE
    assert await keys.find("k1") is not None  # still cached: this request does not wait for the refresh
    await keys.settled()
    assert served.requests == 3
    assert await keys.find("k1") is None
    assert await keys.find("k2") is not None


async def test_a_flood_of_unknown_kids_fetches_at_most_once_per_cooldown(served: JwksServer, clock: FakeClock) -> None:
    keys = remote(served, clock)
    assert await keys.find("k1") is not None
    for _ in range(3):
        results = await asyncio.gather(*(keys.find(f"forged-{n}") for n in range(200)))
        assert results == [None] * 200
    assert served.requests == 1  # the first fetch's cooldown still runs
    clock.now += COOLDOWN
    for _ in range(3):
        assert await asyncio.gather(*(keys.find(f"forged-{n}") for n in range(200))) == [None] * 200
    assert served.requests == 2


async def test_concurrent_requests_wait_on_one_fetch_and_a_hung_endpoint_times_out(
    served: JwksServer, clock: FakeClock
) -> None:
    served.released.clear()  # the endpoint accepts and never answers
    keys = remote(served, clock, fetch_timeout=0.3)
    results = await asyncio.gather(*(keys.find("k1") for _ in range(20)), return_exceptions=True)
    assert all(isinstance(result, SigningKeysUnavailable) for result in results), results
    assert served.requests == 1


async def test_a_jwks_that_is_not_one_keeps_the_cached_keys(served: JwksServer, clock: FakeClock) -> None:
    keys = remote(served, clock)
    assert await keys.find("k1") is not None
    served.document = {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k9"}]}  # no public key: refused
    clock.now += MAX_AGE
    assert await keys.find("k1") is not None
    await keys.settled()
    assert served.requests == 2
    assert await keys.find("k1") is not None
