"""Bearer tokens for the benchmark's AUTH_MODE=jwt runs: the Gateway's key, the service's AUTH_* settings, and a
token per user of the wrk scripts, made before the run (wrk sends them, it never signs)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from benchmarks.seed import HEAVY_USER, LIGHT_USER

ALGORITHMS = {"jwt-es256": "ES256", "jwt-rs256": "RS256", "jwt-hs256": "HS256", "jwt-eddsa": "EdDSA"}
AUTH_MODES = tuple(ALGORITHMS)
ISSUER, AUDIENCE, KID = "https://gateway.bench", "orders-service", "bench-1"
# Every user the scripts name: create's and hot's buyers, list's and mixed's readers, the growth run's two.
USERS = (*(f"buyer-{n}" for n in range(1, 5001)), *(f"reader-{n}" for n in range(1000)), HEAVY_USER, LIGHT_USER)


PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SignedIdentity:
    settings: dict[str, str]  # the product's AUTH_* settings
    token_file: Path  # "user token" lines, for wrk (BENCH_TOKENS)


def signed_identity(mode: str, directory: Path, lifetime: int = 3600, users: tuple[str, ...] = USERS) -> SignedIdentity:
    """The key of ``mode`` (one of AUTH_MODES), the service configured with it (the public key in a JWKS file, or
    the shared secret), and a token per user valid for ``lifetime`` seconds."""
    algorithm = ALGORITHMS[mode]
    settings = {"AUTH_MODE": "jwt", "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE, "AUTH_ALGORITHMS": algorithm}
    signing_key: str | PrivateKey
    if algorithm == "HS256":
        signing_key = os.urandom(32).hex()
        settings["AUTH_HS256_SECRET"] = signing_key
    else:
        signing_key, public = _key_pair(algorithm)
        jwks = directory / f"jwks-{mode}.json"
        jwks.write_text(json.dumps({"keys": [{**public, "kid": KID, "alg": algorithm, "use": "sig"}]}))
        settings["AUTH_JWKS_FILE"] = str(jwks)
    now = int(time.time())
    token_file = directory / f"tokens-{mode}.txt"
    with token_file.open("w") as lines:
        for user in users:
            claims = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime}
            token = jwt.encode(claims, signing_key, algorithm=algorithm, headers={"kid": KID})
            lines.write(f"{user} {token}\n")
    return SignedIdentity(settings, token_file)


def _key_pair(algorithm: str) -> tuple[PrivateKey, dict[str, Any]]:
    """A new private key and its public JWK."""
    if algorithm == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        return ec_key, ECAlgorithm.to_jwk(ec_key.public_key(), as_dict=True)
    if algorithm == "EdDSA":
        ed_key = ed25519.Ed25519PrivateKey.generate()
        return ed_key, OKPAlgorithm.to_jwk(ed_key.public_key(), as_dict=True)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return rsa_key, RSAAlgorithm.to_jwk(rsa_key.public_key(), as_dict=True)
