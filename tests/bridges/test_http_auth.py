"""Credentials and token rules as configured: what is accepted, and what is refused at start."""

from __future__ import annotations

import hashlib
import time
from typing import Any

import jwt
import msgspec
import pytest
from litestar.exceptions import NotAuthorizedException

from bridges.http._auth import Authenticator
from config import decode
from messages import ConfigError, Metadata, Principal, Priority, Scope


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


@pytest.mark.parametrize(
    ("tokens", "key"),
    [
        ({"public_key_file": "/etc/af/login.pem", "algorithms": ["RS256"]}, "issuer"),
        ({"issuer": " https://login ", "secret_env": "S", "algorithms": ["HS256"]}, "issuer"),
        ({"issuer": "i", "secret_env": "S", "algorithms": ["HS256"], "leeway": 1e9}, "leeway"),
    ],
)
def test_token_settings_that_would_silently_not_work_are_refused(
    tokens: dict[str, Any], key: str
) -> None:
    with pytest.raises((ConfigError, msgspec.ValidationError), match=key):
        decode({"http": {"tokens": tokens}})


def test_an_hmac_secret_shorter_than_its_hash_is_refused_at_start() -> None:
    tokens = {"issuer": "i", "secret_env": "S", "algorithms": ["HS256", "HS512"]}
    with pytest.raises(ConfigError, match="needs at least 64"):
        authenticator({"S": "x" * 32}, tokens=tokens)
    assert not authenticator({"S": "x" * 64}, tokens=tokens).open


def test_only_the_configured_namespaced_scopes_make_a_token_an_admin_or_a_service() -> None:
    secret = "s" * 32
    auth = authenticator(
        {"S": secret}, tokens={"issuer": "i", "secret_env": "S", "algorithms": ["HS256"]}
    )

    def scope_of(scope: object) -> Scope:
        claims = {"iss": "i", "aud": "actorfleet", "sub": "jane", "exp": 2**40, "scope": scope}
        token = jwt.encode(claims, secret, algorithm="HS256")
        return auth.authenticate({"authorization": f"Bearer {token}"}).principal.scope

    assert scope_of("openid admin") == Scope.USER  # a plain name a client may ask for
    assert scope_of(["read", "service"]) == Scope.USER
    assert scope_of("openid actorfleet:admin") == Scope.ADMIN
    assert scope_of(["actorfleet:service"]) == Scope.SERVICE


def test_a_user_key_cannot_make_its_requests_critical() -> None:
    auth = authenticator(
        {"K": "k"}, credentials=[{"name": "app", "key_env": "K", "scope": "user", "user": "jane"}]
    )
    grant = auth.authenticate({"x-api-key": "k"})
    asked = Metadata(id="m", deadline=time.time() + 5, priority=Priority.CRITICAL)
    acted = auth.acting(grant, "support", object(), asked)
    assert (acted.priority, acted.principal) == (Priority.DEFAULT, grant.principal)


@pytest.mark.slow
def test_a_token_verified_once_is_still_refused_once_it_expires() -> None:
    secret = "s" * 32
    tokens = {"issuer": "i", "secret_env": "S", "algorithms": ["HS256"], "leeway": 0}
    auth = authenticator({"S": secret}, tokens=tokens)
    expires = int(time.time()) + 2
    claims = {"iss": "i", "aud": "actorfleet", "sub": "jane", "exp": expires}
    bearer = {"authorization": f"Bearer {jwt.encode(claims, secret, algorithm='HS256')}"}
    first = auth.authenticate(bearer)
    assert auth.authenticate(bearer) is first  # verified once, then remembered
    time.sleep(max(expires - time.time(), 0) + 0.1)  # the behaviour under test: its expiry
    with pytest.raises(NotAuthorizedException, match="expired"):
        auth.authenticate(bearer)
