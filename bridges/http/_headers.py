"""A request's metadata from its HTTP headers: deadline, id, priority, trace context.

The values are checked by the rules every edge shares (`messages._limits`):
a deadline is plain decimal seconds (`float()` would also take `1_0`, `1e1`,
`+5`, `inf` or `nan`), an id is 1-128 of `A-Za-z0-9._:-`, and trace context
that is not valid W3C is dropped (a new trace starts), not refused. Each
of these headers may come once: sent twice (a proxy appending its own
`X-Priority`, say) it is a bad request, as a repeated header is on NATS.
"""

from __future__ import annotations

import time
from typing import Final, Protocol

from messages import (
    BadRequest,
    Metadata,
    Priority,
    check_identifier,
    new_message_id,
    parse_decimal,
    valid_traceparent,
    valid_tracestate,
)

TIMEOUT_HEADER: Final = "x-request-timeout"
REQUEST_ID_HEADER: Final = "x-request-id"
PRIORITY_HEADER: Final = "x-priority"


class MultiHeaders(Protocol):
    """Headers that keep every value of a repeated one (Litestar's `Headers`)."""

    def getall(self, key: str, default: list[str]) -> list[str]: ...


def _once(headers: MultiHeaders, name: str, shown: str) -> str | None:
    """The header's value, None if absent.

    Raises:
        BadRequest: It is sent more than once.
    """
    values = headers.getall(name, [])
    if len(values) > 1:
        msg = f"{shown} is sent {len(values)} times; send it once"
        raise BadRequest(msg)
    return values[0] if values else None


def request_metadata(
    headers: MultiHeaders, *, default_timeout: float, max_timeout: float
) -> Metadata:
    """The metadata a request's `headers` ask for.

    Raises:
        BadRequest: `X-Request-Timeout`, `X-Request-Id` or `X-Priority` has
            a bad value, or one of them is sent twice.
    """
    timeout = default_timeout
    raw = _once(headers, TIMEOUT_HEADER, "X-Request-Timeout")
    if raw is not None:
        timeout = parse_decimal(raw, what="X-Request-Timeout")
        if not 0 < timeout <= max_timeout:
            msg = f"X-Request-Timeout must be seconds in (0, {max_timeout:g}], not {raw}"
            raise BadRequest(msg)
    # An empty X-Request-Id is no id: the request gets a fresh one.
    request_id = check_identifier(
        _once(headers, REQUEST_ID_HEADER, "X-Request-Id") or new_message_id(),
        what="X-Request-Id",
    )
    priority = _once(headers, PRIORITY_HEADER, "X-Priority") or Priority.DEFAULT
    if priority not in Priority.__members__.values():
        msg = f"X-Priority must be one of {', '.join(p.value for p in Priority)}"
        raise BadRequest(msg)
    # W3C trace context: a repeated traceparent is not valid (a new trace
    # starts); repeated tracestate headers are one list.
    parents = headers.getall("traceparent", [])
    traceparent = valid_traceparent(parents[0]) if len(parents) == 1 else None
    states = headers.getall("tracestate", [])
    return Metadata(
        id=request_id,
        deadline=time.time() + timeout,
        priority=Priority(priority),
        sender="http",
        traceparent=traceparent,
        tracestate=valid_tracestate(",".join(states) if states else None, traceparent),
    )
