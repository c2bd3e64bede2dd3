"""Credentials and token rules as configured: what is accepted, and what is refused at start."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from litestar.exceptions import NotAuthorizedException

from bridges.http._auth import Authenticator
from config import decode
from messages import ConfigError, Principal, Scope


def authenticator(environ: dict[str, str] | None = None, **http: Any) -> Authenticator:
    return Authenticator(decode({"http": http}).http, environ or {})


def test_a_key_given_by_its_digest_is_accepted_and_the_config_holds_no_secret() -> None:
    digest = hashlib.sha256(b"s3cret").hexdigest()
    auth = authenticator(credentials=[{"name": "ops", "key_sha256": digest, "scope": "admin"}])
    grant = auth.authenticate({"x-api-key": "s3cret"})
    assert grant.principal == Principal(name="ops", scope=Scope.ADMIN)
    with pytest.raises(NotAuthorizedException):
        auth.authenticate({"x-api-key": "s3cret "})


def test_a_key_whose_environment_variable_is_unset_fails_at_start_naming_it() -> None:
    credentials = [{"name": "web", "key_env": "AF_KEY_WEB", "scope": "service"}]
    with pytest.raises(ConfigError, match=r"http\.credentials\[0\]\.key_env.*AF_KEY_WEB"):
        authenticator(credentials=credentials)
    assert not authenticator({"AF_KEY_WEB": "k"}, credentials=credentials).open


@pytest.mark.parametrize(
    ("credential", "reason"),
    [
        ({"name": "a", "scope": "admin"}, "exactly one of key_env and key_sha256"),
        ({"name": "a", "key_env": "K", "scope": "user"}, "names no user"),
        ({"name": "a", "key_env": "K", "scope": "admin", "user": "x"}, "only a user key"),
    ],
)
def test_a_credential_that_cannot_work_is_refused_at_load(
    credential: dict[str, Any], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        decode({"http": {"credentials": [credential]}})


def test_tokens_verified_with_a_public_key_may_not_use_an_hmac_algorithm() -> None:
    # HS256 with a public key as its secret lets anyone who has the key sign.
    tokens = {"issuer": "i", "public_key_file": "k.pem", "algorithms": ["RS256", "HS256"]}
    with pytest.raises(ConfigError, match=r"http\.tokens\.algorithms"):
        decode({"http": {"tokens": tokens}})


def test_an_edge_with_nothing_configured_is_open_and_any_credential_makes_it_closed() -> None:
    assert authenticator().open
    assert not authenticator(api_keys=["k"]).open
