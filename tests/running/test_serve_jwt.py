"""AUTH_MODE=jwt under real Granian with 2 workers: each worker fetches the JWKS once, users with their own tokens
see only their own orders, a forged X-User is 401, refusals are counted across workers, and no log line holds a
token or a signature."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.granian import GranianServer, start_granian, wait_for_access_line
from tests.support.jwt_issuer import Issuer, JwksServer, jwks_server, jwt_env
from tests.support.scrape import scrape

WORKERS = 2
ORDER = {"items": [{"product_id": 1, "qty": 1}]}


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    issuer = Issuer()
    issuer.add_key("es-1", "ES256")
    issuer.add_key("rs-1", "RS256")
    return issuer


@pytest.fixture(scope="module")
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with jwks_server(issuer.jwks()) as server:
        yield server


@pytest.fixture(scope="module")
def signed_service(
    settings: Settings, jwks: JwksServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GranianServer]:
    env = {**settings.as_env(), **jwt_env(AUTH_JWKS_URL=jwks.url), "LOG_USER": "true", "DB_POOL_TIMEOUT": "30"}
    with start_granian(
        Settings.from_env(env), workers=WORKERS, metrics_dir=tmp_path_factory.mktemp("jwt-metrics")
    ) as server:
        yield server


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def refused(server: GranianServer, reason: str) -> float:
    return scrape(server).get(("orders_auth_refusals_total", (("reason", reason),)), 0.0)


def test_users_with_their_own_tokens_see_only_their_own_orders(
    signed_service: GranianServer, jwks: JwksServer, issuer: Issuer, catalog: Catalog
) -> None:
    catalog.add(1, stock=10_000)
    users = [f"shopper-{n}" for n in range(40)]
    tokens = {user: issuer.token(user, kid=("es-1", "rs-1")[n % 2]) for n, user in enumerate(users)}

    def shop(user: str) -> tuple[list[int], list[dict[str, object]]]:
        placed = []
        for _ in range(3):
            # A new connection each time: both workers serve every user.
            response = httpx.post(f"{signed_service.base_url}/orders", json=ORDER, headers=bearer(tokens[user]))
            assert response.status_code == 200, response.text
            placed.append(response.json()["id"])
        mine = httpx.get(f"{signed_service.base_url}/orders/me", headers=bearer(tokens[user]))
        return placed, mine.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = dict(zip(users, pool.map(shop, users), strict=True))
    for user, (placed, listed) in results.items():
        assert sorted(order["id"] for order in listed) == sorted(placed)  # type: ignore[type-var]
        assert {order["user_id"] for order in listed} == {user}
        assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE user_id = :u", u=user) == 3
    assert catalog.order_count() == 3 * len(users)
    assert 1 <= jwks.requests <= WORKERS  # each worker fetched once at most, never per request


def test_a_forged_x_user_is_401_and_refusals_are_counted_across_workers(
    signed_service: GranianServer, issuer: Issuer, catalog: Catalog
) -> None:
    before = refused(signed_service, "missing"), refused(signed_service, "expired")
    expired = issuer.token("alice", claims={"iat": 1_000_000_000, "exp": 1_000_000_300})
    for _ in range(10):
        forged = httpx.post(f"{signed_service.base_url}/orders", json=ORDER, headers={"X-User": "alice"})
        assert forged.status_code == 401
        assert forged.json()["reason"] == "missing"
        assert forged.headers["www-authenticate"] == 'Bearer realm="orders"'
        stale = httpx.get(f"{signed_service.base_url}/orders/me", headers=bearer(expired, **{"X-User": "alice"}))
        assert (stale.status_code, stale.json()["reason"]) == (401, "expired")
        assert 'error="invalid_token"' in stale.headers["www-authenticate"]
    assert (refused(signed_service, "missing"), refused(signed_service, "expired")) == (before[0] + 10, before[1] + 10)
    assert catalog.order_count() == 0


def test_no_log_line_holds_a_token_or_a_signature(signed_service: GranianServer, issuer: Issuer) -> None:
    good = issuer.token("logged-user")
    bad = issuer.token("logged-user", claims={"aud": "elsewhere"})
    for token, request_id in ((good, "jwt-log-good"), (bad, "jwt-log-bad"), (good + "x", "jwt-log-malformed")):
        httpx.get(
            f"{signed_service.base_url}/orders/me",
            headers=bearer(token, **{"X-Request-ID": request_id, "X-User": "forged-user"}),
        )
    accepted = wait_for_access_line(signed_service, "jwt-log-good")
    assert (accepted["status"], accepted["user"]) == (200, "logged-user")  # LOG_USER: the token's user, not X-User
    assert wait_for_access_line(signed_service, "jwt-log-bad")["status"] == 401
    assert wait_for_access_line(signed_service, "jwt-log-malformed")["status"] == 401
    log = signed_service.log()
    for token in (good, bad):
        _header, payload, signature = token.split(".")
        assert token not in log
        assert signature not in log
        assert payload not in log
    assert "forged-user" not in log


def test_serve_refuses_jwt_mode_without_an_issuer_in_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "orders_service.cli", "serve"],
        env={"AUTH_MODE": "jwt", "AUTH_AUDIENCE": "orders-service", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "orders-service: invalid configuration: AUTH_MODE=jwt needs AUTH_ISSUER (the iss every token must carry)"
    ]
