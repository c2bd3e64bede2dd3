"""What authentication costs per request at the HTTP edge, in-process.

    python bench/auth.py [--quick]

A static key (looked up by its SHA-256), the acting principal of a user
key, and bearer tokens (JWT) signed HS256 and EdDSA: each verified afresh
(the first request with a token) and again (a cached one). Five rounds,
medians in microseconds per request; nothing here crosses a socket.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

# This file's folder must not shadow `http` (bench/http.py); the repo root goes first.
_BENCH = Path(__file__).resolve().parent
sys.path[:] = [str(_BENCH.parent), *(p for p in sys.path if Path(p or ".").resolve() != _BENCH)]

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from actors.support import SupportRequest
from bridges.http._auth import Authenticator
from config import decode
from messages import Metadata

ROUNDS: Final = 5
SECRET: Final = "s" * 32
CLAIMS: Final = {"iss": "login", "aud": "actorfleet", "sub": "jane", "exp": 2**40}


def per_call(fn: Callable[[], object], calls: int) -> float:
    """Median microseconds per call over `ROUNDS` rounds."""
    rounds = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - started) / calls * 1e6)
    return statistics.median(rounds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per round")
    calls = 2_000 if parser.parse_args().quick else 20_000
    key = {"name": "app", "key_env": "K", "scope": "user", "user": "jane"}
    hs = {"issuer": "login", "secret_env": "S", "algorithms": ["HS256"]}
    keys = Authenticator(
        decode({"http": {"credentials": [key], "tokens": hs}}).http, {"K": "k", "S": SECRET}
    )
    signer = Ed25519PrivateKey.generate()
    pem = Path(tempfile.mkdtemp()) / "login.pem"
    pem.write_bytes(
        signer.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    ed = {"issuer": "login", "public_key_file": str(pem), "algorithms": ["EdDSA"]}
    eddsa = Authenticator(decode({"http": {"tokens": ed}}).http, {})
    grant = keys.authenticate({"x-api-key": "k"})
    message = SupportRequest(user_id="jane", message="hi")
    meta = Metadata(id="m", deadline=time.time() + 60)

    def fresh(auth: Authenticator, token: str) -> Callable[[], object]:
        headers = {"authorization": f"Bearer {token}"}

        def verify() -> object:
            auth._tokens._verified.clear()  # type: ignore[union-attr] # noqa: SLF001 - uncached
            return auth.authenticate(headers)

        return verify

    hs_token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
    ed_token = jwt.encode(CLAIMS, signer, algorithm="EdDSA")
    rows = [
        ("static key", per_call(lambda: keys.authenticate({"x-api-key": "k"}), calls)),
        (
            "acting principal (user key)",
            per_call(lambda: keys.acting(grant, "support", message, meta), calls),
        ),
        ("HS256 token, first request", per_call(fresh(keys, hs_token), calls // 10)),
        (
            "HS256 token, again",
            per_call(lambda: keys.authenticate({"authorization": f"Bearer {hs_token}"}), calls),
        ),
        ("EdDSA token, first request", per_call(fresh(eddsa, ed_token), calls // 10)),
        (
            "EdDSA token, again",
            per_call(lambda: eddsa.authenticate({"authorization": f"Bearer {ed_token}"}), calls),
        ),
    ]
    print(f"{'what':<30} {'us/request':>10}")
    for what, micros in rows:
        print(f"{what:<30} {micros:>10.2f}")


if __name__ == "__main__":
    main()
