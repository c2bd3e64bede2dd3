"""Who is calling: credentials and signed tokens mapped to principals, checked per request.

The guard on every API route authenticates the caller once (`Grant`): a
static key (`X-API-Key`, or `Authorization: Bearer <key>`) is looked up by
its SHA-256, so neither its length nor its bytes leak through timing; a
bearer token that is no configured key is verified as a JWT (PyJWT:
signature, `exp`, `iss`, `aud`, `sub`). Then each request gets its acting
principal (`Authenticator.acting`): a `user` grant acts only as its own
user, and a body that names no user is filled in with it
(`fill_owner`); a `service` grant acts for the user its request names; an
`admin` grant for anyone. A grant may be limited to some agent types.

Failures follow RFC 6750: no credential or a bad one is 401 with
`WWW-Authenticate: Bearer`; a valid one that may not do this is 403.
"""

from __future__ import annotations

import hashlib
import os
import time
import typing
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Union
from urllib.parse import urlsplit

import jwt
import msgspec
from litestar.exceptions import NotAuthorizedException

from config import is_loopback_host
from messages import ConfigError, Forbidden, Principal, Priority, Scope, UserRef

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from litestar.connection import ASGIConnection

    from config import HttpSettings, TokenSettings
    from messages import Metadata

API_KEY_HEADER: Final = "x-api-key"
CHALLENGE: Final = 'Bearer realm="actorfleet"'
"""What a 401 asks for (RFC 9110 `WWW-Authenticate`): a bearer token."""
GRANT: Final = "actorfleet_grant"
"""Where the guard leaves a request's grant (its connection state)."""
OWNER_FIELD: Final = "user_id"
"""The field that names a request's user, unless its type says `owner_field`."""
_TAG: Final = "type"
_JWT_DOTS: Final = 2
_VERIFIED_TOKENS: Final = 1024
_HMAC_BYTES: Final = {"HS256": 32, "HS384": 48, "HS512": 64}
_user: Final = msgspec.json.Decoder(UserRef)


@dataclass(frozen=True, slots=True)
class Grant:
    """What an authenticated caller may do.

    Attributes:
        principal: Who it is (a service's or admin's names no user yet).
        agents: Agent types it may call; empty: every type.
    """

    principal: Principal
    agents: frozenset[str] = frozenset()


def owner_field(message_type: Any) -> str | None:
    """The field of `message_type` that names the user a request acts for, if any.

    A type names it with a class variable `owner_field` (`"customer_id"`);
    otherwise a `user_id` field is it.
    """
    declared = getattr(message_type, "owner_field", None)
    if isinstance(declared, str):
        return declared
    fields = getattr(message_type, "__struct_fields__", ())
    return OWNER_FIELD if OWNER_FIELD in fields else None


class Authenticator:
    """The edge's credentials and token rules, from `[http]`.

    Raises:
        ConfigError: A key's environment variable is unset or empty, or the
            token key cannot be read.
    """

    def __init__(self, settings: HttpSettings, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        self._keys: dict[bytes, Grant] = {}
        for index, key in enumerate(settings.api_keys):
            legacy = Principal(name=f"api-key-{index}", scope=Scope.SERVICE)
            self._keys[_digest(key)] = Grant(principal=legacy)
        for index, credential in enumerate(settings.credentials):
            path = f"http.credentials[{index}]"
            if credential.key_env:
                secret = environ.get(credential.key_env, "")
                if not secret.strip():
                    reason = f"environment variable {credential.key_env} is unset or empty"
                    raise ConfigError(f"{path}.key_env", reason)
                digest = _digest(secret)
            else:
                digest = bytes.fromhex(credential.key_sha256)
            if digest in self._keys:
                raise ConfigError(path, f"credential {credential.name!r} repeats another's key")
            principal = Principal(
                name=credential.name, scope=Scope(credential.scope), user=credential.user or None
            )
            self._keys[digest] = Grant(principal=principal, agents=frozenset(credential.agents))
        self._tokens = _TokenRules(settings.tokens, environ) if settings.tokens.issuer else None

    @property
    def open(self) -> bool:
        """Whether callers need nothing (no keys, no tokens: a loopback edge)."""
        return not self._keys and self._tokens is None

    def authenticate(self, headers: Mapping[str, str]) -> Grant:
        """The grant of the credential the request presents.

        Raises:
            NotAuthorizedException: None is presented, or it is not valid (401).
        """
        presented = headers.get(API_KEY_HEADER)
        bearer = False
        if presented is None:
            scheme, _, token = headers.get("authorization", "").partition(" ")
            bearer = scheme.lower() == "bearer"
            presented = token.strip() if bearer else None
        if not presented:
            msg = "a credential is needed (Authorization: Bearer <key or token>, or X-API-Key)"
            raise NotAuthorizedException(msg, headers={"WWW-Authenticate": CHALLENGE})
        grant = self._keys.get(_digest(presented))
        if grant is not None:
            return grant
        if bearer and self._tokens is not None and presented.count(".") == _JWT_DOTS:
            return self._tokens.verify(presented)
        raise _invalid("the credential is not valid")

    def acting(
        self, grant: Grant | None, agent_type: str, message: Any, meta: Metadata
    ) -> Metadata:
        """`meta` with the principal `message` is asked for under `grant`.

        Raises:
            Forbidden: The grant may not call `agent_type`, or a user grant's
                request names another user.
        """
        if grant is None:
            return meta
        principal = grant.principal
        if grant.agents and agent_type not in grant.agents:
            msg = f"{principal.name} may not call {agent_type}"
            raise Forbidden(msg)
        field = owner_field(type(message))
        named = getattr(message, field, None) if field is not None else None
        if principal.scope == Scope.USER:
            if named is not None and named != principal.user:
                msg = f"{principal.name} acts as its own user only"
                raise Forbidden(msg)
            # A user's requests do not jump the queue: critical is the operators'.
            if meta.priority == Priority.CRITICAL:
                meta = msgspec.structs.replace(meta, priority=Priority.DEFAULT)
        elif principal.scope == Scope.SERVICE:
            principal = msgspec.structs.replace(principal, user=named)
        return msgspec.structs.replace(meta, principal=principal)


def same_machine(connection: ASGIConnection[Any, Any, Any, Any], _: Any) -> None:
    """On an open (loopback) edge: refuse what a web page could send from elsewhere.

    With no credentials the edge trusts its caller for any user, which is
    only safe for programs on this machine. A browser on it would carry a
    page's cross-site POST (with an `Origin`), or a DNS-rebound one (with
    the attacker's name as `Host`), to the loopback port; both are refused.

    Raises:
        Forbidden: The request's `Host` or `Origin` is not a loopback name.
    """
    host = connection.headers.get("host", "")
    origin = connection.headers.get("origin")
    if not _loopback(host) or (origin is not None and not _loopback(urlsplit(origin).netloc)):
        msg = "an open edge serves this machine only: a request from a web page is refused"
        raise Forbidden(msg)


def _loopback(netloc: str) -> bool:
    name = netloc.rsplit("@", 1)[-1]
    name = name[1 : name.find("]")] if name.startswith("[") else name.rpartition(":")[0] or name
    return is_loopback_host(name)


def remember(connection: ASGIConnection[Any, Any, Any, Any], grant: Grant) -> None:
    """Keep the guard's `grant` with the request it authenticated."""
    state: dict[str, Any] = connection.scope.setdefault("state", {})
    state[GRANT] = grant


def grant_of(connection: ASGIConnection[Any, Any, Any, Any]) -> Grant | None:
    """The request's grant (None on an open edge)."""
    state: dict[str, Any] = connection.scope.get("state") or {}
    grant = state.get(GRANT)
    return grant if isinstance(grant, Grant) else None


def fill_owner(value: Any, target: Any, grant: Grant | None) -> Any:
    """A decoded JSON body, its user filled in from a `user` grant where it names none."""
    if grant is None or grant.principal.scope != Scope.USER or not isinstance(value, dict):
        return value
    field = owner_field(_variant(value, target))
    if field is not None and field not in value:
        value[field] = grant.principal.user
    return value


def _variant(value: dict[str, Any], target: Any) -> Any:
    """The member of a tagged union `target` that a body's `type` names."""
    if typing.get_origin(target) is not Union:
        return target
    tag = value.get(_TAG)
    for member in typing.get_args(target):
        config = getattr(member, "__struct_config__", None)
        if config is not None and config.tag == tag:
            return member
    return None


class _TokenRules:
    """Verifies JWTs against the configured issuer, audience and key."""

    def __init__(self, settings: TokenSettings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        if settings.public_key_file:
            try:
                self._key: str | bytes = Path(settings.public_key_file).read_bytes()
            except OSError as exc:
                raise ConfigError("http.tokens.public_key_file", str(exc)) from exc
        else:
            secret = environ.get(settings.secret_env, "")
            if not secret:
                reason = f"environment variable {settings.secret_env} is unset or empty"
                raise ConfigError("http.tokens.secret_env", reason)
            # RFC 7518 3.2: a key at least as long as the hash; a shorter one
            # can be found from one token, offline, and then signs any token.
            shortest = max(_HMAC_BYTES[a] for a in settings.algorithms)
            if len(secret.encode()) < shortest:
                reason = (
                    f"the secret in {settings.secret_env} has {len(secret.encode())} bytes;"
                    f" {', '.join(settings.algorithms)} needs at least {shortest}"
                )
                raise ConfigError("http.tokens.secret_env", reason)
            self._key = secret.encode()
        self._algorithms = list(settings.algorithms)
        # Tokens verified already, with when they expire (least recently used first).
        self._verified: OrderedDict[str, tuple[Grant, float]] = OrderedDict()

    def verify(self, token: str) -> Grant:
        """The grant a valid token stands for.

        Raises:
            NotAuthorizedException: It is expired, not signed by the key, for
                another issuer or audience, or names no valid user (401).
        """
        held = self._verified.get(token)
        if held is not None and time.time() < held[1]:
            self._verified.move_to_end(token)
            return held[0]
        rules = self.settings
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self._algorithms,
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=rules.leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError:
            raise _invalid("the token has expired") from None
        except jwt.InvalidTokenError as exc:
            raise _invalid(f"the token is not valid: {exc}") from None
        try:
            user = _user.decode(msgspec.json.encode(claims["sub"]))
        except msgspec.ValidationError:
            raise _invalid("the token's sub is not a user id") from None
        scopes = _scopes(claims.get(rules.scope_claim))
        granted = ((rules.admin_scope, Scope.ADMIN), (rules.service_scope, Scope.SERVICE))
        scope = next((s for name, s in granted if name and name in scopes), Scope.USER)
        # A service or admin token acts for others: it names no user of its own.
        own = user if scope == Scope.USER else None
        grant = Grant(principal=Principal(name=rules.name, scope=scope, user=own))
        # Checking a signature costs 35-115 us; a client sends its token again and again.
        self._verified[token] = (grant, float(claims["exp"]) + rules.leeway)
        if len(self._verified) > _VERIFIED_TOKENS:
            self._verified.popitem(last=False)
        return grant


def _scopes(claim: Any) -> Sequence[str]:
    if isinstance(claim, str):
        return claim.split()
    if isinstance(claim, list):
        return [s for s in claim if isinstance(s, str)]
    return ()


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def _invalid(reason: str) -> NotAuthorizedException:
    challenge = f'{CHALLENGE}, error="invalid_token"'
    return NotAuthorizedException(reason, headers={"WWW-Authenticate": challenge})
