"""What the HTTP edge declares: agent request/reply types, their OpenAPI, API keys."""

from __future__ import annotations

import hmac
import types
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, Union

from litestar import Litestar
from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException, PermissionDeniedException
from litestar.openapi.spec import Schema

if TYPE_CHECKING:
    from actors import Agent

API_KEY_HEADER: Final = "x-api-key"


def optional_tags(app: Litestar) -> None:
    """Say in the document what msgspec does: a message's `type` tag may be left out.

    Alone, a request type decodes without it; among several (`oneOf`), a
    body without it matches them all, so it is invalid there, as msgspec
    finds it too.
    """
    for schema in (app.openapi_schema.components.schemas or {}).values():
        if isinstance(schema, Schema) and schema.required and "type" in schema.required:
            schema.required = [name for name in schema.required if name != "type"] or None


def check_api_key(connection: ASGIConnection[Any, Any, Any, Any], keys: list[str]) -> None:
    """Raise unless the connection presents one of `keys`."""
    presented = connection.headers.get(API_KEY_HEADER)
    if presented is None:
        scheme, _, token = connection.headers.get("authorization", "").partition(" ")
        presented = token.strip() if scheme.lower() == "bearer" else None
    if not presented:
        msg = "an API key is needed (Authorization: Bearer <key> or X-API-Key)"
        raise NotAuthorizedException(msg)
    if not any(hmac.compare_digest(presented.encode(), k.encode()) for k in keys):
        msg = "the API key is not valid"
        raise PermissionDeniedException(msg)


def union_of(options: Sequence[type]) -> Any:
    return options[0] if len(options) == 1 else Union[tuple(options)]  # noqa: UP007 - built at run time


def reply_types(agent_class: type[Agent], accepted: Sequence[type]) -> list[type]:
    found: list[type] = []
    for message_type in accepted:
        fn = agent_class.handlers[message_type]
        try:
            returned = typing.get_type_hints(fn).get("return")
        except (NameError, TypeError):
            return []
        if returned is None or returned is type(None):
            continue
        union = typing.get_origin(returned) in {Union, types.UnionType}
        options = typing.get_args(returned) if union else ()
        for option in options or (returned,):
            if isinstance(option, type) and option not in found and option is not type(None):
                found.append(option)
    return found
