"""Bounds on what crosses an edge: identifiers, trace context, numbers in headers.

Every edge (HTTP headers, NATS headers, the NATS request envelope, event
fields) checks the same rules, so a value one edge refuses no other edge
lets in. The `Annotated` aliases carry the rules into msgspec decoding and
into the OpenAPI document; the `check_*` functions apply them to values
that arrive as text (headers).
"""

from __future__ import annotations

import re
from typing import Annotated, Final

import msgspec

from messages._errors import BadRequest

MAX_ID_LENGTH: Final = 128
"""The longest message id, correlation id, sender or record id accepted from outside."""
# `(?!\n)`: Python's `$` (and so msgspec's) also matches before a final newline.
ID_PATTERN: Final = r"^[A-Za-z0-9._:-]+$(?!\n)"
"""What an identifier may hold: letters, digits and `. _ : -` (ASCII only)."""
SENDER_PATTERN: Final = r"^[A-Za-z0-9._:/@-]+$(?!\n)"
"""What a sender may hold: an identifier's characters and `/ @` (`support/3`)."""
MAX_TRACESTATE_LENGTH: Final = 512
"""W3C trace context: a `tracestate` longer than this may be dropped."""
TRACEPARENT_PATTERN: Final = r"^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$(?!\n)"
MAX_NUMBER_LENGTH: Final = 32
"""The longest number accepted as header text."""

Identifier = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)
]
"""A bounded id (message, correlation, record): `[A-Za-z0-9._:-]{1,128}`."""
Sender = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_LENGTH, pattern=SENDER_PATTERN)
]
"""Who sent a message (an agent's name, a client's): `[A-Za-z0-9._:/@-]{1,128}`."""
Traceparent = Annotated[str, msgspec.Meta(pattern=TRACEPARENT_PATTERN)]
Tracestate = Annotated[str, msgspec.Meta(max_length=MAX_TRACESTATE_LENGTH)]

_ID: Final = re.compile(ID_PATTERN)
_SENDER: Final = re.compile(SENDER_PATTERN)
_TRACEPARENT: Final = re.compile(TRACEPARENT_PATTERN)
# Plain decimal only: float() also takes "1_000", " 5 ", "inf", "nan", "1e3" and
# non-ASCII digits, none of which a header should carry.
_DECIMAL: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def check_identifier(value: str, *, what: str) -> str:
    """Return `value` if it is a valid identifier.

    Raises:
        BadRequest: If it is empty, longer than `MAX_ID_LENGTH` or holds other
            characters than letters, digits and `. _ : -`.
    """
    return _checked(value, _ID, what=what, allowed="letters, digits or . _ : -")


def check_optional_identifier(value: str | None, *, what: str) -> str | None:
    """`check_identifier` for a value that may be absent."""
    return None if value is None else check_identifier(value, what=what)


def check_sender(value: str | None, *, what: str) -> str | None:
    """Return `value` (None if absent) if it is a valid sender.

    Raises:
        BadRequest: If it is empty, too long or holds other characters than
            letters, digits and `. _ : / @ -`.
    """
    if value is None:
        return None
    return _checked(value, _SENDER, what=what, allowed="letters, digits or . _ : / @ -")


def _checked(value: str, pattern: re.Pattern[str], *, what: str, allowed: str) -> str:
    if len(value) > MAX_ID_LENGTH or not pattern.match(value):
        shown = value if len(value) <= MAX_ID_LENGTH else f"{value[:32]}... ({len(value)} chars)"
        msg = f"{what} must be 1-{MAX_ID_LENGTH} {allowed}, not {shown!r}"
        raise BadRequest(msg)
    return value


def valid_traceparent(value: str | None) -> str | None:
    """`value` if it is a W3C `traceparent`; None otherwise.

    W3C trace context says an invalid parent is ignored (a new trace starts),
    not an error.
    """
    return value if value is not None and _TRACEPARENT.match(value) else None


def valid_tracestate(value: str | None, traceparent: str | None) -> str | None:
    """`value` if it may go with `traceparent`: only beside a valid parent, bounded."""
    if traceparent is None or value is None or len(value) > MAX_TRACESTATE_LENGTH:
        return None
    return value


def parse_decimal(text: str, *, what: str) -> float:
    """A number written as plain decimal text (`30`, `2.5`, `-1`, `1733150000.25`).

    Raises:
        BadRequest: For anything else: exponents, `inf`, `nan`, underscores,
            spaces, signs other than a leading `-`, non-ASCII digits, or over
            `MAX_NUMBER_LENGTH` characters.
    """
    if len(text) > MAX_NUMBER_LENGTH or not _DECIMAL.fullmatch(text):
        shown = text if len(text) <= MAX_NUMBER_LENGTH else f"{text[:MAX_NUMBER_LENGTH]}..."
        msg = f"{what} must be a plain decimal number, not {shown!r}"
        raise BadRequest(msg)
    return float(text)
