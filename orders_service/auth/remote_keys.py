"""The issuer's keys from ``AUTH_JWKS_URL``: fetched lazily, cached, refreshed without a request waiting for it.

Never fetched at import (Granian forks workers that each import the app) nor per request: the first request of a
worker fetches; keys older than ``AUTH_JWKS_MAX_AGE_SECONDS`` are refreshed in the background while the cached
ones keep verifying; a token naming a ``kid`` the cache lacks refreshes at once, but at most once per
``AUTH_JWKS_REFRESH_COOLDOWN_SECONDS``. One fetch is in flight per worker; the requests that need it wait on it.
A fetch runs in a thread (urllib) under a bounded timeout, so the event loop never waits on the network.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import urllib.request
from collections.abc import Callable

from jwt import PyJWK

from orders_service.auth.refusals import SigningKeysUnavailable
from orders_service.auth.signing_keys import keys_by_id
from orders_service.observability import metrics

logger = logging.getLogger(__name__)

MAX_JWKS_BYTES = 1024 * 1024


def fetch_document(url: str, timeout: float) -> bytes:
    """GET ``url`` (blocking: run in a thread); OSError for a status other than 2xx or a network failure."""
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310 - http(s) only (config)
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        document: bytes = response.read(MAX_JWKS_BYTES + 1)
    if len(document) > MAX_JWKS_BYTES:
        raise ValueError(f"larger than {MAX_JWKS_BYTES} bytes")
    return document


class RemoteKeys:
    """The keys of a JWKS URL, per worker."""

    def __init__(
        self,
        url: str,
        *,
        fetch_timeout: float,
        cooldown: float,
        max_age: float,
        clock: Callable[[], float] = time.monotonic,
        fetch: Callable[[str, float], bytes] = fetch_document,
    ) -> None:
        self._url = url
        self._fetch_timeout = fetch_timeout
        self._cooldown = cooldown
        self._max_age = max_age
        self._clock = clock
        self._fetch = fetch
        self._keys: dict[str, PyJWK] = {}
        self._fetched_at: float | None = None  # the last fetch that succeeded
        self._attempted_at: float | None = None  # the last fetch started, whatever came of it
        self._last_failed = False
        self._refresh: asyncio.Task[None] | None = None

    async def find(self, kid: str) -> PyJWK | None:
        """The key ``kid``; None when a fetch that just succeeded has none by that name.

        SigningKeysUnavailable when the cache lacks it and the JWKS could not be fetched (now, or in the last
        attempt, whose cooldown runs): the token may well be good, the service cannot tell.
        """
        key = self._keys.get(kid)
        if key is not None:
            if self._is_stale():
                self._start_refresh()  # in the background: this request goes on with the cached key
            return key
        if self._refresh is None and self._may_fetch():
            self._start_refresh()
        if self._refresh is not None:
            await asyncio.shield(self._refresh)  # a request that gives up does not cancel the others' fetch
            key = self._keys.get(kid)
            if key is not None:
                return key
        if self._fetched_at is None or self._last_failed:
            raise SigningKeysUnavailable(retry_after=self._retry_after())
        return None

    async def settled(self) -> None:
        """Once the fetch in flight, if any, is over (started in the background by a request for a cached key)."""
        if self._refresh is not None:
            await asyncio.shield(self._refresh)

    async def close(self) -> None:
        if self._refresh is not None:
            self._refresh.cancel()

    def _may_fetch(self) -> bool:
        return self._attempted_at is None or self._clock() - self._attempted_at >= self._cooldown

    def _is_stale(self) -> bool:
        return (
            self._refresh is None
            and self._fetched_at is not None
            and self._clock() - self._fetched_at >= self._max_age
            and self._may_fetch()
        )

    def _retry_after(self) -> int:
        since = 0.0 if self._attempted_at is None else self._clock() - self._attempted_at
        return max(1, math.ceil(self._cooldown - since))

    def _start_refresh(self) -> None:
        self._attempted_at = self._clock()
        self._refresh = asyncio.create_task(self._run_refresh())

    async def _run_refresh(self) -> None:
        try:
            async with asyncio.timeout(self._fetch_timeout):
                document = await asyncio.to_thread(self._fetch, self._url, self._fetch_timeout)
            keys = keys_by_id(document)
        except Exception as exc:  # noqa: BLE001 - any failure leaves the cached keys in place, never a 500
            self._last_failed = True
            metrics.AUTH_JWKS_FETCHES_BY_OUTCOME["failed"].inc()
            reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
            logger.warning(
                "cannot fetch the JWKS from %s: %s; the %d cached keys stay", self._url, reason, len(self._keys)
            )
        else:
            self._keys = keys
            self._fetched_at = self._clock()
            self._last_failed = False
            metrics.AUTH_JWKS_FETCHES_BY_OUTCOME["ok"].inc()
        finally:
            self._refresh = None
