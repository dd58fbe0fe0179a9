"""CPU per token verification, in-process, per algorithm: what AUTH_MODE=jwt adds to a request, without the noise
of a whole service under wrk.

    uv run python -m benchmarks.token_cost [--verifications 20000]

The service's own TokenVerifier, configured as the benchmark's --auth runs configure the product (keys from a
JWKS file, or the shared secret), verifying 200 users' tokens in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import tokens
from orders_service.auth.token_verifier import TokenVerifier
from orders_service.config import Settings

USERS = 200


async def cost_of(mode: str, directory: Path, verifications: int) -> float:
    """Microseconds of CPU per verification with ``mode``'s key."""
    identity = tokens.signed_identity(mode, directory, users=tokens.USERS[:USERS])
    verifier = TokenVerifier.from_settings(Settings.from_env(identity.settings))
    signed = [line.split(" ", 1)[1] for line in identity.token_file.read_text().splitlines()]
    for token in signed:  # warm: the keys loaded, the code paths taken once
        await verifier.user_of(token)
    started = time.process_time()
    for number in range(verifications):
        await verifier.user_of(signed[number % USERS])
    return (time.process_time() - started) / verifications * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="benchmarks.token_cost", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--verifications", type=int, default=20_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="orders-token-cost-") as directory:
        for mode in tokens.AUTH_MODES:
            micros = asyncio.run(cost_of(mode, Path(directory), args.verifications))
            print(f"{mode:10} {micros:6.1f} us of CPU per verification", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
