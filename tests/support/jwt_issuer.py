"""The Gateway's side of AUTH_MODE=jwt, made by the tests: signing keys, tokens, and a JWKS served over HTTP."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://gateway.test"
AUDIENCE = "orders-service"
HS256_SECRET = "a-shared-secret-of-more-than-32-bytes!"  # noqa: S105 - the tests' own

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey


def new_private_key(algorithm: str) -> PrivateKey:
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(algorithm)


def public_jwk(kid: str, algorithm: str, key: PrivateKey) -> dict[str, Any]:
    public = key.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    return {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}


@dataclass
class Issuer:
    """Signing keys by kid, as the Gateway holds them, and the tokens it would sign."""

    keys: dict[str, tuple[str, PrivateKey]] = field(default_factory=dict)

    def add_key(self, kid: str, algorithm: str = "ES256") -> str:
        self.keys[kid] = (algorithm, new_private_key(algorithm))
        return kid

    def jwks(self, *kids: str) -> dict[str, Any]:
        """The public JWKS of ``kids`` (every key by default)."""
        chosen = kids or tuple(self.keys)
        return {"keys": [public_jwk(kid, *self.keys[kid]) for kid in chosen]}

    def token(
        self,
        user: object = "alice",
        *,
        kid: str | None = None,
        lifetime: int = 300,
        claims: dict[str, Any] | None = None,
        drop: tuple[str, ...] = (),
        headers: dict[str, Any] | None = None,
    ) -> str:
        """A token for ``user`` signed with key ``kid`` (the first one by default), valid from now for ``lifetime``."""
        kid = kid or next(iter(self.keys))
        algorithm, key = self.keys[kid]
        now = int(time.time())
        payload = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime, **(claims or {})}
        for name in drop:
            payload.pop(name, None)
        return jwt.encode(payload, key, algorithm=algorithm, headers={"kid": kid, **(headers or {})})


def hs256_token(user: object = "alice", secret: str | bytes = HS256_SECRET, **claims: Any) -> str:
    now = int(time.time())
    payload = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300, **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def jwt_env(**overrides: str) -> dict[str, str]:
    """The AUTH_* settings of the tests' issuer (keys from overrides: AUTH_JWKS_URL, AUTH_JWKS_FILE …)."""
    return {"AUTH_MODE": "jwt", "AUTH_ISSUER": ISSUER, "AUTH_AUDIENCE": AUDIENCE, **overrides}


class JwksServer:
    """The issuer's JWKS over HTTP on 127.0.0.1, counting the requests it gets; it can be taken down (connections
    refused) and brought back on the same port, or made to hold its answers (a hung endpoint)."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        self.released = threading.Event()
        self.released.set()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.port = 0
        self.up()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/.well-known/jwks.json"

    def up(self) -> None:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner.requests += 1
                owner.released.wait(30)
                body = json.dumps(owner.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def down(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


@contextlib.contextmanager
def jwks_server(document: dict[str, Any]) -> Iterator[JwksServer]:
    server = JwksServer(document)
    try:
        yield server
    finally:
        server.released.set()
        server.down()


def hmac_token(secret: bytes, payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
    """An HS256 token made by hand, with any secret: PyJWT refuses to sign with a public key's PEM, an attacker
    does not (the algorithm-confusion attack)."""
    header = {"alg": "HS256", "typ": "JWT", **(headers or {})}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def unsigned_token(payload: dict[str, Any]) -> str:
    """``alg: none``: no signature at all."""
    return f"{_b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{_b64(json.dumps(payload).encode())}."


def claims(user: object = "alice", lifetime: int = 300, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + lifetime, **extra}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
