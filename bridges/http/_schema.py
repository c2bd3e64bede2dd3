"""What the HTTP edge declares: agent request/reply types and their OpenAPI.

Litestar builds the document from the msgspec types; `document_rules` adds
what the server checks beyond them, so that a body the document calls valid
is one the server takes.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, Union

import msgspec
from litestar import Litestar
from litestar.openapi.spec import Discriminator, OpenAPIType, Reference, RequestBody, Schema

from messages import GenerateRequest

if TYPE_CHECKING:
    from actors import Agent

TAG: Final = "type"
_COMPONENTS: Final = "#/components/schemas/"
# Not blank by Python's `str.isspace` (what the pool checks), written so that
# ECMA-262 and Python regular expressions read it alike.
NOT_BLANK: Final = (
    r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a"  # \t-\r: tab, LF, VT, FF, CR
    r"\u2028\u2029\u202f\u205f\u3000]"
)


_BOUNDS: Final = {
    "ge": "minimum",
    "gt": "exclusive_minimum",
    "le": "maximum",
    "lt": "exclusive_maximum",
}
_NUMBERS: Final = (msgspec.inspect.IntType, msgspec.inspect.FloatType)


def document_rules(app: Litestar, body_types: Iterable[type]) -> None:
    """Say in the document what the server checks beyond what Litestar read in the types."""
    document_tags(app)
    document_prompt(app)
    document_zero_bounds(app, [*body_types, GenerateRequest])


def document_tags(app: Litestar) -> None:
    """Say in the document what msgspec does with a message's `type` tag.

    A body of an agent's only request type decodes without its tag, so it is
    optional there. Among several (`oneOf`), msgspec tells them apart by the
    tag alone, so every branch requires it and the union names it as its
    discriminator, as a Pydantic discriminated union does in FastAPI: a body
    is one type or another by what it says, not by which fields it happens
    to have (which would change meaning when a request type is added).
    Replies always carry it.
    """
    schemas = app.openapi_schema.components.schemas or {}
    alone: set[str] = set()
    in_unions: set[str] = set()
    for body in _request_bodies(app):
        if isinstance(body, Reference):
            alone.add(body.ref.removeprefix(_COMPONENTS))
        elif body.one_of:
            refs = [m.ref for m in body.one_of if isinstance(m, Reference)]
            in_unions.update(ref.removeprefix(_COMPONENTS) for ref in refs)
            mapping = {_tag_of(schemas.get(ref.removeprefix(_COMPONENTS))): ref for ref in refs}
            mapping.pop("", None)
            body.discriminator = Discriminator(property_name=TAG, mapping=mapping or None)
    for name in alone - in_unions:
        schema = schemas.get(name)
        if isinstance(schema, Schema) and schema.required and TAG in schema.required:
            schema.required = [field for field in schema.required if field != TAG] or None


def document_prompt(app: Litestar) -> None:
    """`GenerateRequest`: exactly one of `prompt` (not blank) and `messages` (not empty)."""
    schema = (app.openapi_schema.components.schemas or {}).get("GenerateRequest")
    if not isinstance(schema, Schema):
        return
    schema.one_of = [
        Schema(
            required=["prompt"],
            properties={
                "prompt": Schema(type=OpenAPIType.STRING, pattern=NOT_BLANK),
                "messages": Schema(type=OpenAPIType.NULL),
            },
        ),
        Schema(
            required=["messages"],
            properties={
                "messages": Schema(type=OpenAPIType.ARRAY, min_items=1),
                "prompt": Schema(type=OpenAPIType.NULL),
            },
        ),
    ]


def document_zero_bounds(app: Litestar, body_types: Sequence[type]) -> None:
    """Put back the bounds of 0 that Litestar leaves out of optional numbers.

    Litestar copies an `int | None` field's `ge`, `gt`, `le` and `lt` only
    when they are truthy, so `Annotated[int, Meta(ge=0)] | None` (a seed)
    would be documented without its minimum.
    """
    schemas = app.openapi_schema.components.schemas or {}
    for struct in _structs(body_types):
        schema = schemas.get(struct.cls.__name__)
        properties = (schema.properties if isinstance(schema, Schema) else None) or {}
        for field in struct.fields:
            documented = properties.get(field.encode_name)
            number = _number_of(field.type)
            if not isinstance(documented, Schema) or number is None:
                continue
            for bound, key in _BOUNDS.items():
                if getattr(number, bound) == 0 and getattr(documented, key) is None:
                    setattr(documented, key, 0)


def _structs(body_types: Sequence[type]) -> list[msgspec.inspect.StructType]:
    """The struct types of `body_types` and of their fields, however deep."""
    found: dict[type, msgspec.inspect.StructType] = {}
    pending = list(msgspec.inspect.multi_type_info(body_types))
    while pending:
        info = pending.pop()
        if isinstance(info, msgspec.inspect.StructType) and info.cls not in found:
            found[info.cls] = info
            pending.extend(field.type for field in info.fields)
        elif isinstance(info, msgspec.inspect.UnionType):
            pending.extend(info.types)
        elif isinstance(info, msgspec.inspect.Metadata):
            pending.append(info.type)
        elif isinstance(info, (msgspec.inspect.ListType, msgspec.inspect.VarTupleType)):
            pending.append(info.item_type)
        elif isinstance(info, msgspec.inspect.DictType):
            pending.append(info.value_type)
    return list(found.values())


def _number_of(
    info: msgspec.inspect.Type,
) -> msgspec.inspect.IntType | msgspec.inspect.FloatType | None:
    """The number type of a number field, optional or not."""
    if isinstance(info, msgspec.inspect.UnionType):
        others = [t for t in info.types if not isinstance(t, msgspec.inspect.NoneType)]
        info = others[0] if len(others) == 1 else info
    if isinstance(info, msgspec.inspect.Metadata):
        info = info.type
    return info if isinstance(info, _NUMBERS) else None


def _request_bodies(app: Litestar) -> list[Schema | Reference]:
    found: list[Schema | Reference] = []
    for path in (app.openapi_schema.paths or {}).values():
        for operation in (path.get, path.put, path.post, path.delete, path.patch):
            body = operation.request_body if operation is not None else None
            media = body.content.get("application/json") if isinstance(body, RequestBody) else None
            if media is not None and media.schema is not None:
                found.append(media.schema)
    return found


def _tag_of(schema: Schema | Reference | None) -> str:
    if not isinstance(schema, Schema):
        return ""
    tag = (schema.properties or {}).get(TAG)
    const = tag.const if isinstance(tag, Schema) else None
    return const if isinstance(const, str) else ""


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
