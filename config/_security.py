"""Who may call the HTTP edge: credentials (static keys) and signed bearer tokens (JWT)."""

from __future__ import annotations

from typing import Annotated, Final, Literal

import msgspec

from config._base import Section
from messages import ConfigError

CredentialName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")
]
EnvName = Annotated[str, msgspec.Meta(pattern=r"^([A-Za-z_][A-Za-z0-9_]*)?$")]
Sha256 = Annotated[str, msgspec.Meta(pattern=r"^([0-9a-f]{64})?$")]
_SYMMETRIC: Final = frozenset({"HS256", "HS384", "HS512"})
_ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)


class Credential(Section, frozen=True, kw_only=True):
    """One static key and the principal it stands for.

    Attributes:
        name: How the key is named in logs, metrics and `ctx.principal`
            (never the key itself).
        key_env: Environment variable that holds the key.
        key_sha256: Or the key's SHA-256, hex: the config then holds no
            secret at all (`printf %s "$KEY" | sha256sum`).
        scope: `user` (acts as `user` only: a request naming another user
            is refused, one naming none is filled in), `service` (a trusted
            front end: acts for the user each request names) or `admin`
            (acts for anyone).
        user: The user a `user` key acts as.
        agents: Agent types the key may call; empty: every type.
    """

    name: CredentialName
    key_env: EnvName = ""
    key_sha256: Sha256 = ""
    scope: Literal["user", "service", "admin"] = "user"
    user: Annotated[str, msgspec.Meta(max_length=200, pattern=r"^[^/\x00-\x1f\x7f]*$")] = ""
    agents: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if bool(self.key_env) == bool(self.key_sha256):
            reason = f"credential {self.name!r} needs exactly one of key_env and key_sha256"
            raise ConfigError("http.credentials", reason)
        if self.scope == "user" and not self.user:
            reason = f"credential {self.name!r} has scope user but names no user"
            raise ConfigError("http.credentials", reason)
        if self.scope != "user" and self.user:
            reason = f"credential {self.name!r}: only a user key names a user"
            raise ConfigError("http.credentials", reason)


class TokenSettings(Section, frozen=True, kw_only=True):
    """Signed bearer tokens (JWT) from a login the node trusts: one principal per token.

    A token must be signed with `public_key_file`'s key (RS*, PS*, ES*,
    EdDSA) or the HMAC secret in `secret_env` (HS*), name `issuer` and
    `audience`, carry `exp` and the user in `sub`; `scope_claim` (space
    separated, or a list) may grant `service` or `admin`, else the token
    acts as its `sub` only.

    Attributes:
        issuer: The `iss` tokens must name; empty: no tokens are accepted.
        audience: The `aud` tokens must name.
        algorithms: Signature algorithms accepted (never `none`).
        public_key_file: PEM file of the issuer's public key.
        secret_env: Environment variable holding the HMAC secret.
        leeway: Seconds of clock skew allowed on `exp`, `nbf` and `iat`
            (at most 300).
        scope_claim: The claim that holds the token's scopes.
        admin_scope: The scope that makes a token's principal an admin
            (namespaced: many logins let a client ask for any plain scope
            name, such as `admin`); empty: no token is an admin.
        service_scope: The scope that makes it a service.
        name: How a token's principal is named (its `sub` is the user).
    """

    issuer: str = ""
    audience: str = "actorfleet"
    algorithms: list[str] = msgspec.field(default_factory=lambda: ["RS256", "ES256", "EdDSA"])
    public_key_file: str = ""
    secret_env: EnvName = ""
    leeway: Annotated[float, msgspec.Meta(ge=0, le=300)] = 30.0
    scope_claim: str = "scope"
    admin_scope: str = "actorfleet:admin"
    service_scope: str = "actorfleet:service"
    name: CredentialName = "token"

    def __post_init__(self) -> None:
        if self.issuer != self.issuer.strip():
            raise ConfigError("http.tokens.issuer", "the issuer has blanks around it")
        if not self.issuer:
            if self.public_key_file or self.secret_env:
                reason = "a token key is set but no issuer: set issuer, or tokens are refused"
                raise ConfigError("http.tokens.issuer", reason)
            return
        if bool(self.public_key_file) == bool(self.secret_env):
            reason = "tokens need exactly one of public_key_file and secret_env"
            raise ConfigError("http.tokens", reason)
        allowed = _ASYMMETRIC if self.public_key_file else _SYMMETRIC
        wrong = [a for a in self.algorithms if a not in allowed]
        if wrong or not self.algorithms:
            kind = "a public key" if self.public_key_file else "an HMAC secret"
            reason = f"with {kind} the algorithms must be some of {sorted(allowed)}, not {wrong}"
            raise ConfigError("http.tokens.algorithms", reason)
