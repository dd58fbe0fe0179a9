"""The issuer's public keys by ``kid``: from a JWKS document, and from a file (air-gapped setups)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from jwt import PyJWK, PyJWKSet
from jwt.exceptions import PyJWKSetError

# Key types whose key is public: a JWKS's symmetric ("oct") key is never used, whatever its alg says.
ASYMMETRIC_KEY_TYPES = frozenset({"EC", "RSA", "OKP"})


class SigningKeys(Protocol):
    async def find(self, kid: str) -> PyJWK | None:
        """The key named ``kid``, or None when the issuer has none by that name."""
        ...

    async def close(self) -> None:
        """Stop what runs in the background (the worker stops)."""
        ...


def keys_by_id(document: str | bytes) -> dict[str, PyJWK]:
    """The usable public keys of a JWKS document, by ``kid`` (keys without one cannot be named by a token);
    ValueError when it holds none."""
    try:
        keys = PyJWKSet.from_json(document.decode() if isinstance(document, bytes) else document).keys
    except (PyJWKSetError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not a JWKS with a usable key: {exc}") from None
    usable = {key.key_id: key for key in keys if key.key_id and key.key_type in ASYMMETRIC_KEY_TYPES}
    if not usable:
        raise ValueError("not a JWKS with a usable key: no public key with a kid")
    return usable


class FileKeys:
    """The keys of ``AUTH_JWKS_FILE``, read once when the worker starts (a new file needs a restart)."""

    def __init__(self, path: str) -> None:
        self._keys = keys_by_id(Path(path).read_bytes())

    async def find(self, kid: str) -> PyJWK | None:
        return self._keys.get(kid)

    async def close(self) -> None:
        pass
