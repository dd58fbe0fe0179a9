"""AUTH_MODE=jwt in-process: the user is the `sub` of a token the Gateway signed, every other token is refused with
its reason, X-User counts for nothing, and the issuer's JWKS (served over HTTP by the test) may come and go."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import jwt
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from openapi_spec_validator import validate
from prometheus_client import REGISTRY

from orders_service.app import create_app
from orders_service.config import Settings
from tests.conftest import Catalog
from tests.support.jwt_issuer import (
    HS256_SECRET,
    Issuer,
    JwksServer,
    claims,
    hmac_token,
    hs256_token,
    jwks_server,
    jwt_env,
    unsigned_token,
)

JwtClient = AsyncTestClient[Litestar]
ORDER = {"items": [{"product_id": 1, "qty": 1}]}
MAX_LIFETIME = 3600


@pytest.fixture(scope="module")
def issuer() -> Issuer:
    issuer = Issuer()
    for kid, algorithm in (("es-1", "ES256"), ("rs-1", "RS256"), ("ed-1", "EdDSA")):
        issuer.add_key(kid, algorithm)
    return issuer


@pytest.fixture
def jwks(issuer: Issuer) -> Iterator[JwksServer]:
    with jwks_server(issuer.jwks("es-1", "rs-1", "ed-1")) as server:
        yield server


def jwt_settings(settings: Settings, **env: str) -> Settings:
    return Settings.from_env({**settings.as_env(), **jwt_env(**env)})


@pytest.fixture
def make_client(settings: Settings, jwks: JwksServer, catalog: Catalog) -> Callable[..., JwtClient]:
    """A new app (a new worker: an empty key cache) in AUTH_MODE=jwt, keys from the test's JWKS URL."""
    catalog.add(1, stock=1000)

    def make(**env: str) -> JwtClient:
        return AsyncTestClient(app=create_app(jwt_settings(settings, AUTH_JWKS_URL=jwks.url, **env)))

    return make


@pytest.fixture
async def client(make_client: Callable[..., JwtClient]) -> AsyncIterator[JwtClient]:
    async with make_client() as client:
        yield client


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def refusals(reason: str) -> float:
    return REGISTRY.get_sample_value("orders_auth_refusals_total", {"reason": reason}) or 0.0


@pytest.mark.parametrize("kid", ["es-1", "rs-1", "ed-1"], ids=["ES256", "RS256", "EdDSA"])
async def test_the_user_is_the_tokens_sub(client: JwtClient, issuer: Issuer, kid: str) -> None:
    token = issuer.token("zoë", kid=kid)
    placed = await client.post("/orders", json=ORDER, headers=bearer(token))
    assert placed.status_code == 200, placed.text
    assert placed.json()["user_id"] == "zoë"
    mine = await client.get("/orders/me", headers=bearer(token))
    assert [order["id"] for order in mine.json()] == [placed.json()["id"]]


def _tampered(token: str) -> str:
    """The token with its payload rewritten to name another user, the signature kept."""
    header, payload, signature = token.split(".")
    claims_ = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims_, "sub": "mallory"}).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _public_pem(issuer: Issuer, kid: str) -> bytes:
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415

    return (
        issuer.keys[kid][1]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )


def _other_key_same_kid() -> str:
    impostor = Issuer()
    impostor.add_key("es-1", "ES256")
    return impostor.token("alice")


NOW = int(time.time())
TOKENS: dict[str, tuple[str, Callable[[Issuer], str | None]]] = {
    "no header": ("missing", lambda issuer: None),
    "basic auth": ("missing", lambda issuer: "Basic YWxpY2U6c2VjcmV0"),
    "not a jwt": ("malformed", lambda issuer: "Bearer not-a-token"),
    "parts not JSON": ("malformed", lambda issuer: "Bearer YWJj.YWJj.YWJj"),
    "five parts (JWE)": ("malformed", lambda issuer: "Bearer a.b.c.d.e"),
    "expired": ("expired", lambda issuer: issuer.token(claims={"iat": NOW - 400, "exp": NOW - 100})),
    "nbf in the future": ("not_yet_valid", lambda issuer: issuer.token(claims={"nbf": int(time.time()) + 120})),
    "iat in the future": (
        "not_yet_valid",
        lambda issuer: issuer.token(claims={"iat": int(time.time()) + 120, "exp": int(time.time()) + 300}),
    ),
    "signed by another key": ("bad_signature", lambda issuer: _other_key_same_kid()),
    "sub rewritten": ("bad_signature", lambda issuer: _tampered(issuer.token("alice"))),
    "wrong audience": ("wrong_audience", lambda issuer: issuer.token(claims={"aud": "billing-service"})),
    "wrong issuer": ("wrong_issuer", lambda issuer: issuer.token(claims={"iss": "https://evil.test"})),
    "no exp": ("missing_claim", lambda issuer: issuer.token(drop=("exp",))),
    "no iss": ("missing_claim", lambda issuer: issuer.token(drop=("iss",))),
    "no aud": ("missing_claim", lambda issuer: issuer.token(drop=("aud",))),
    "no sub": ("missing_claim", lambda issuer: issuer.token(drop=("sub",))),
    "alg none": ("algorithm_not_allowed", lambda issuer: unsigned_token(claims())),
    "RS256 public key as HS256 secret": (
        "algorithm_not_allowed",
        lambda issuer: hmac_token(_public_pem(issuer, "rs-1"), claims(), {"kid": "rs-1"}),
    ),
    "HS256 not allowed": ("algorithm_not_allowed", lambda issuer: hs256_token()),
    "kid of a key of another algorithm": (
        "algorithm_not_allowed",
        lambda issuer: issuer.token(kid="es-1", headers={"kid": "rs-1"}),
    ),
    "unknown kid": ("unknown_key", lambda issuer: issuer.token(headers={"kid": "es-9"})),
    "no kid": ("unknown_key", lambda issuer: jwt.encode(claims(), issuer.keys["es-1"][1], algorithm="ES256")),
    "lives 2 hours": ("lifetime_too_long", lambda issuer: issuer.token(lifetime=2 * MAX_LIFETIME)),
    "no iat, expires in 2 hours": (
        "lifetime_too_long",
        lambda issuer: issuer.token(lifetime=2 * MAX_LIFETIME, drop=("iat",)),
    ),
    "sub a number": ("bad_user", lambda issuer: issuer.token(42)),
    "sub empty": ("bad_user", lambda issuer: issuer.token("")),
    "sub with a comma": ("bad_user", lambda issuer: issuer.token("alice,bob")),
    "sub with a control character": ("bad_user", lambda issuer: issuer.token("ali\x85ce")),
    "sub of 256 characters": ("bad_user", lambda issuer: issuer.token("é" * 256)),
    "sub with blanks around": ("bad_user", lambda issuer: issuer.token(" alice")),
}


@pytest.mark.parametrize(("reason", "make_token"), TOKENS.values(), ids=TOKENS.keys())
async def test_every_bad_token_is_401_with_its_reason_whatever_x_user_says(
    client: JwtClient,
    issuer: Issuer,
    catalog: Catalog,
    reason: str,
    make_token: Callable[[Issuer], str | None],
) -> None:
    made = make_token(issuer)
    authorization = made if made is None or made.startswith(("Bearer ", "Basic ")) else f"Bearer {made}"
    headers = {"X-User": "alice", **({"Authorization": authorization} if authorization else {})}
    before = refusals(reason)
    for response in (
        await client.post("/orders", json=ORDER, headers=headers),
        await client.get("/orders/me", headers=headers),
        await client.get("/orders/1", headers=headers),
    ):
        assert response.status_code == 401, response.text
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert (body["status"], body["title"], body["reason"]) == (401, "Unauthorized", reason)
        challenge = response.headers["www-authenticate"]
        if reason == "missing":
            assert challenge == 'Bearer realm="orders"'
        else:
            assert challenge == (f'Bearer realm="orders", error="invalid_token", error_description="{body["detail"]}"')
    assert refusals(reason) == before + 3
    assert catalog.order_count() == 0


async def test_a_token_header_sent_twice_is_malformed(client: JwtClient, issuer: Issuer) -> None:
    response = await client.get(
        "/orders/me", headers=[("Authorization", f"Bearer {issuer.token()}"), ("Authorization", "Bearer x.y.z")]
    )
    assert (response.status_code, response.json()["reason"]) == (401, "malformed")


async def test_a_forged_x_user_gets_nowhere(client: JwtClient, issuer: Issuer, catalog: Catalog) -> None:
    """Bob's token with X-User: alice is Bob's order; X-User alone is nothing."""
    assert (await client.post("/orders", json=ORDER, headers={"X-User": "alice"})).status_code == 401
    placed = await client.post("/orders", json=ORDER, headers=bearer(issuer.token("bob"), **{"X-User": "alice"}))
    assert placed.json()["user_id"] == "bob"
    assert (await client.get("/orders/me", headers=bearer(issuer.token("alice")))).json() == []
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE user_id = 'alice'") == 0
    assert catalog.scalar("SELECT count(*) FROM {orders}.orders WHERE user_id = 'bob'") == 1


async def test_many_users_at_once_each_see_only_their_own_orders(
    client: JwtClient, issuer: Issuer, catalog: Catalog
) -> None:
    users = [f"user-{n}" for n in range(24)]
    kids = ["es-1", "rs-1", "ed-1"]
    tokens = {user: issuer.token(user, kid=kids[n % 3]) for n, user in enumerate(users)}

    async def shop(user: str) -> list[int]:
        placed = [await client.post("/orders", json=ORDER, headers=bearer(tokens[user])) for _ in range(3)]
        assert all(response.status_code == 200 for response in placed)
        return [response.json()["id"] for response in placed]

    placed = dict(zip(users, await asyncio.gather(*(shop(user) for user in users)), strict=True))
    listed = await asyncio.gather(*(client.get("/orders/me", headers=bearer(tokens[user])) for user in users))
    for user, response in zip(users, listed, strict=True):
        assert sorted(order["id"] for order in response.json()) == sorted(placed[user])
        assert {order["user_id"] for order in response.json()} == {user}
    for user in users:
        ids = placed[user]
        assert (
            catalog.scalar(
                "SELECT count(*) FROM {orders}.orders WHERE user_id = :u AND id = ANY(:ids)", u=user, ids=ids
            )
            == 3
        )
    assert catalog.order_count() == 3 * len(users)


async def test_the_jwks_down_with_the_key_cached_changes_nothing(
    client: JwtClient, issuer: Issuer, jwks: JwksServer
) -> None:
    assert (await client.get("/orders/me", headers=bearer(issuer.token()))).status_code == 200
    jwks.down()
    for _ in range(5):
        assert (await client.get("/orders/me", headers=bearer(issuer.token()))).status_code == 200
    assert jwks.requests == 1


async def test_an_unknown_kid_with_the_jwks_down_is_503_with_retry_after(
    make_client: Callable[..., JwtClient], issuer: Issuer, jwks: JwksServer, catalog: Catalog
) -> None:
    jwks.down()
    before = refusals("signing_keys_unavailable")
    async with make_client(AUTH_JWKS_REFRESH_COOLDOWN_SECONDS="30") as client:
        for response in (
            await client.post("/orders", json=ORDER, headers=bearer(issuer.token())),
            await client.get("/orders/me", headers=bearer(issuer.token())),
        ):
            assert response.status_code == 503, response.text
            assert response.json()["reason"] == "signing_keys_unavailable"
            assert 1 <= int(response.headers["retry-after"]) <= 30
            assert "www-authenticate" not in response.headers
        jwks.up()  # back, but the cooldown holds: still cannot tell
        assert (await client.get("/orders/me", headers=bearer(issuer.token()))).status_code == 503
    assert refusals("signing_keys_unavailable") == before + 3
    assert catalog.order_count() == 0


async def test_rotation_a_new_kid_is_accepted_once_published_and_the_retired_one_refused(
    make_client: Callable[..., JwtClient], issuer: Issuer, jwks: JwksServer
) -> None:
    rotating = Issuer(keys=dict(issuer.keys))
    rotating.add_key("es-2", "ES256")
    rotating.add_key("es-3", "ES256")
    async with make_client(AUTH_JWKS_REFRESH_COOLDOWN_SECONDS="0") as client:
        old = rotating.token("alice", kid="es-1")
        assert (await client.get("/orders/me", headers=bearer(old))).status_code == 200
        new = rotating.token("alice", kid="es-2")
        assert (await client.get("/orders/me", headers=bearer(new))).json()["reason"] == "unknown_key"
        jwks.document = rotating.jwks("es-1", "es-2")  # the switch: both keys published
        assert (await client.get("/orders/me", headers=bearer(new))).status_code == 200
        assert (await client.get("/orders/me", headers=bearer(old))).status_code == 200
        jwks.document = rotating.jwks("es-2", "es-3")  # es-1 retired; the next new key published
        assert (await client.get("/orders/me", headers=bearer(rotating.token(kid="es-3")))).status_code == 200
        refused = await client.get("/orders/me", headers=bearer(old))
        assert (refused.status_code, refused.json()["reason"]) == (401, "unknown_key")
        assert (await client.get("/orders/me", headers=bearer(new))).status_code == 200


async def test_a_flood_of_unknown_kids_fetches_the_jwks_once(
    make_client: Callable[..., JwtClient], issuer: Issuer, jwks: JwksServer
) -> None:
    async with make_client(AUTH_JWKS_REFRESH_COOLDOWN_SECONDS="60") as client:
        assert jwks.requests == 0  # the app started: nothing fetched before a token needs a key
        forged = [issuer.token(headers={"kid": f"forged-{n}"}) for n in range(100)]
        responses = await asyncio.gather(*(client.get("/orders/me", headers=bearer(token)) for token in forged))
        assert {(response.status_code, response.json()["reason"]) for response in responses} == {(401, "unknown_key")}
        responses = await asyncio.gather(*(client.get("/orders/me", headers=bearer(token)) for token in forged))
        assert {response.status_code for response in responses} == {401}
        assert (await client.get("/orders/me", headers=bearer(issuer.token()))).status_code == 200
    assert jwks.requests == 1


@pytest.fixture
def jwks_file(issuer: Issuer, tmp_path: Any) -> str:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(issuer.jwks("es-1", "ed-1")))
    return str(path)


async def test_keys_from_a_file_for_air_gapped_setups(
    settings: Settings, catalog: Catalog, issuer: Issuer, jwks_file: str
) -> None:
    async with AsyncTestClient(app=create_app(jwt_settings(settings, AUTH_JWKS_FILE=jwks_file))) as client:
        assert (await client.get("/orders/me", headers=bearer(issuer.token(kid="ed-1")))).status_code == 200
        response = await client.get("/orders/me", headers=bearer(issuer.token(kid="rs-1")))
        assert (response.status_code, response.json()["reason"]) == (401, "unknown_key")


async def test_hs256_with_a_shared_secret_and_no_confusion_with_the_public_keys(
    settings: Settings, catalog: Catalog, issuer: Issuer, jwks_file: str
) -> None:
    env = {"AUTH_JWKS_FILE": jwks_file, "AUTH_ALGORITHMS": "ES256,HS256", "AUTH_HS256_SECRET": HS256_SECRET}
    async with AsyncTestClient(app=create_app(jwt_settings(settings, **env))) as client:
        assert (await client.get("/orders/me", headers=bearer(hs256_token("carol")))).status_code == 200
        assert (await client.get("/orders/me", headers=bearer(issuer.token(kid="es-1")))).status_code == 200
        for token, reason in (
            (hs256_token("carol", secret=b"another-secret-of-more-than-32-bytes"), "bad_signature"),
            # Algorithm confusion: HS256 is allowed here, but only ever with the shared secret.
            (hmac_token(_public_pem(issuer, "es-1"), claims(), {"kid": "es-1"}), "bad_signature"),
            (issuer.token(kid="ed-1"), "algorithm_not_allowed"),
        ):
            response = await client.get("/orders/me", headers=bearer(token))
            assert (response.status_code, response.json()["reason"]) == (401, reason)


async def test_another_user_claim(make_client: Callable[..., JwtClient], issuer: Issuer) -> None:
    async with make_client(AUTH_USER_CLAIM="preferred_username") as client:
        token = issuer.token(42, claims={"preferred_username": "dave"})
        placed = await client.post("/orders", json=ORDER, headers=bearer(token))
        assert placed.json()["user_id"] == "dave"
        response = await client.get("/orders/me", headers=bearer(issuer.token("dave")))
        assert (response.status_code, response.json()["reason"]) == (401, "missing_claim")


async def test_the_openapi_document_declares_the_bearer_scheme(client: JwtClient) -> None:
    document = (await client.get("/schema/openapi.json")).json()
    validate(document)  # openapi-spec-validator
    assert document["components"]["securitySchemes"] == {
        "GatewayToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "JWT",
            "description": document["components"]["securitySchemes"]["GatewayToken"]["description"],
        }
    }
    operations = [op for item in document["paths"].values() for op in item.values() if op.get("security")]
    assert len(operations) >= 6
    for operation in operations:
        assert operation["security"] == [{"GatewayToken": []}]
        unauthorized = operation["responses"]["401"]
        assert "WWW-Authenticate" in unauthorized["headers"]
        assert "`lifetime_too_long`" in unauthorized["description"]
        assert "signing_keys_unavailable" in operation["responses"]["503"]["description"]
    reasons = document["components"]["schemas"]["ProblemDetails"]["properties"]["reason"]["enum"]
    assert {"bad_signature", "unknown_key", "signing_keys_unavailable", "insufficient_stock", None} <= set(reasons)
    assert "GatewayUser" not in json.dumps(document)
    # X-User is ignored in this mode: the document names it only to say so.
    assert re.findall(r".{0,60}X-User(?! is ignored).{0,30}", json.dumps(document)) == []


async def test_a_token_longer_than_8_kib_is_malformed(client: JwtClient, issuer: Issuer) -> None:
    token = issuer.token(claims={"padding": "x" * 9000})
    response = await client.get("/orders/me", headers=bearer(token))
    assert (response.status_code, response.json()["reason"]) == (401, "malformed")
