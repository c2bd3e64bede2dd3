"""Who a request acts for: the principal an edge authenticated, carried in its metadata.

An edge (HTTP today) maps each credential it accepts, a static key or a
signed token, to a `Principal`; the principal rides in the request's
metadata to the agents that handle it, over NATS too, and in the requests
those agents make in turn. Agents and tools check it (`Context.principal`,
`Context.check_acts_for`): a `user` acts only for itself, a `service` for
the user each request names, an `admin` for anyone. A request without a
principal comes from inside the trust boundary (another node over an
authenticated NATS connection, an event, an open loopback edge) and acts
for whoever it names.
"""

from __future__ import annotations

import enum
from typing import Annotated, Final

import msgspec

from messages._errors import Forbidden
from messages._limits import Identifier

MAX_USER_LENGTH: Final = 200
"""The longest user id (a user id is also a URL path segment)."""
USER_PATTERN: Final = r"^[^/\x00-\x1f\x7f]+$(?!\n)"

UserRef = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_USER_LENGTH, pattern=USER_PATTERN)
]
"""A user id: 1-200 characters, no `/` and no control characters."""


class Scope(enum.StrEnum):
    """What a principal may do."""

    USER = "user"
    """Act as its own user only."""
    SERVICE = "service"
    """A trusted front end: act for the user each request names."""
    ADMIN = "admin"
    """Act for anyone: erase any user's data, read the audit log."""


class Principal(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """Who a request is made by and for.

    Attributes:
        name: The credential that authenticated it (a key's configured
            name, a token's subject); shown in logs, never a secret.
        scope: What it may do.
        user: The user it acts for: a user principal's own; the user a
            service's request names (None if it names none); None for an
            admin acting as itself.
    """

    name: Identifier
    scope: Scope
    user: UserRef | None = None

    def may_act_for(self, user: str) -> bool:
        """Whether this principal may read or change `user`'s data."""
        return self.scope == Scope.ADMIN or self.user == user


def check_acts_for(principal: Principal | None, user: str, *, what: str) -> None:
    """Raise unless `principal` may act for `user` (no principal: it may).

    Raises:
        Forbidden: Naming `what` was refused, never whose data it was.
    """
    if principal is not None and not principal.may_act_for(user):
        msg = f"{principal.name} may not {what} for another user"
        raise Forbidden(msg)
