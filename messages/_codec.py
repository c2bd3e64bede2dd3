"""MessagePack codec: one encoder, one decoder per union.

JSON appears only at the HTTP edge; every other byte string is MessagePack.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

import msgspec

from messages._agent import ErrorReply, Metadata
from messages._control import ControlMessage
from messages._errors import BadRequest
from messages._events import SupervisionEvent

T = TypeVar("T")

_encoder: Final = msgspec.msgpack.Encoder()
control_decoder: Final = msgspec.msgpack.Decoder(ControlMessage)
event_decoder: Final = msgspec.msgpack.Decoder(SupervisionEvent)
metadata_decoder: Final = msgspec.msgpack.Decoder(Metadata)
error_decoder: Final = msgspec.msgpack.Decoder(ErrorReply)


def encode(message: Any) -> bytes:
    """Encode a message (any msgspec-encodable value) as MessagePack."""
    return _encoder.encode(message)


_decoders: dict[Any, msgspec.msgpack.Decoder[Any]] = {}


def decoder_for(message_type: Any) -> msgspec.msgpack.Decoder[Any]:
    """Return the shared decoder for a message type or union of types."""
    decoder = _decoders.get(message_type)
    if decoder is None:
        decoder = _decoders.setdefault(message_type, msgspec.msgpack.Decoder(message_type))
    return decoder


def decode(data: bytes, message_type: type[T]) -> T:
    """Decode `data` as `message_type` (a Struct or a union of Structs).

    Raises:
        BadRequest: If the bytes are not valid MessagePack for that type.
    """
    try:
        message: T = decoder_for(message_type).decode(data)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"cannot decode {_name(message_type)}: {exc}") from exc
    return message


def _name(message_type: Any) -> str:
    return getattr(message_type, "__name__", None) or str(message_type)
