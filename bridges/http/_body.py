"""Request bodies decoded by msgspec, strictly, into the route's type.

Litestar would decode a JSON body untyped, then convert it to the handler's
type leniently (`0` for `false`, `"5"` for `5`), so the server took more than
the OpenAPI document says. A route that names its body type in its options
(`body_type(...)`) gets it converted strictly instead, as msgspec decodes a
message on every other edge; the value then passes Litestar's own conversion
unchanged. Numbers are read as JSON Schema reads them: `2.0` is the integer
2 (so an `int` field takes it, as the document says), `2.5` a float.

Whatever goes wrong is the client's error: a body that is not JSON at all
(malformed, invalid UTF-8, nested deeper than the interpreter's recursion
limit, a number out of range) is a 400, JSON of the wrong shape a 422.
"""

from __future__ import annotations

import contextlib
import math
import typing
from decimal import Decimal
from typing import Any, Final

import msgspec
from litestar import Request
from litestar.exceptions import SerializationException, ValidationException

from bridges.http._auth import fill_owner, grant_of

BODY_TYPE: Final = "actorfleet.body_type"
"""The route option naming the type a body is converted into."""
NESTED_TOO_DEEPLY: Final = "JSON is malformed: nested too deeply"
NOT_UTF8: Final = "JSON is malformed: a string is not valid UTF-8"
# Integral JSON numbers written with a fraction or exponent become ints
# inside the range msgspec decodes integers in; beyond it they stay floats.
_SMALLEST_INT: Final = -(1 << 63)
_INT_LIMIT: Final = 1 << 64
_TAG: Final = "type"
_EXACT_FLOAT_INT: Final = 1 << 53  # every whole float up to here is exactly its int


def body_type(target: Any) -> dict[str, Any]:
    """Route options (Litestar's `opt`) that have the body converted into `target`."""
    return {BODY_TYPE: target}


class JsonBodyRequest(Request[Any, Any, Any]):
    """A request whose JSON body is converted strictly into its route's body type."""

    async def json(self) -> Any:
        """The decoded body (untyped where the route names no body type).

        Raises:
            SerializationException: The body is not JSON (answered 400).
            ValidationException: It is JSON of the wrong shape (answered 422).
        """
        body = await self.body() or b"null"
        target = self.route_handler.opt.get(BODY_TYPE)
        if target is not None:
            # Most bodies decode straight into their type, in C; only one that
            # does not (maybe a whole number written `2.0` for an int) is read
            # number by number below.
            with contextlib.suppress(msgspec.DecodeError, RecursionError, UnicodeDecodeError):
                return msgspec.json.decode(body, type=target, strict=True)
        value = decode_json(body)
        if target is None:
            return value
        # A user's key or token may leave its own user out of the body.
        value = fill_owner(value, target, grant_of(self))
        try:
            return msgspec.convert(value, target, strict=True)
        except msgspec.ValidationError as wrong:
            raise ValidationException(detail=_with_tags(str(wrong), value, target)) from None


def _with_tags(detail: str, value: Any, target: Any) -> str:
    """`detail`, saying which `type` tags there are when the body's is missing or unknown."""
    tags = [
        t.__struct_config__.tag
        for t in typing.get_args(target)
        if isinstance(getattr(getattr(t, "__struct_config__", None), "tag", None), str)
    ]
    if not tags or not isinstance(value, dict):
        return detail
    given = value.get(_TAG)
    if given is None or (isinstance(given, str) and given not in tags):
        return f'{detail}: "{_TAG}" must be one of {", ".join(tags)}'
    return detail


def decode_json(body: bytes) -> Any:
    """`body` decoded untyped, its numbers as JSON Schema reads them.

    Raises:
        SerializationException: `body` is not JSON this server reads.
    """
    try:
        return _DECODER.decode(body)
    except msgspec.DecodeError as malformed:
        raise SerializationException(str(malformed)) from None
    except RecursionError:
        raise SerializationException(NESTED_TOO_DEEPLY) from None
    except UnicodeDecodeError:
        raise SerializationException(NOT_UTF8) from None


def _json_number(text: str) -> int | float:
    """A JSON number with a fraction or exponent: an int if it is a whole one."""
    value = float(text)
    if not math.isfinite(value):
        msg = "Number out of range"
        raise msgspec.ValidationError(msg)
    if not value.is_integer() or not _SMALLEST_INT <= value < _INT_LIMIT:
        return value  # the common case, without Decimal
    if -_EXACT_FLOAT_INT <= value <= _EXACT_FLOAT_INT:
        return int(value)
    exact = Decimal(text)
    if exact == exact.to_integral_value() and _SMALLEST_INT <= exact < _INT_LIMIT:
        return int(exact)
    return value


_DECODER: Final = msgspec.json.Decoder(float_hook=_json_number)
