"""A request's metadata from its HTTP headers: deadline, id, priority, trace context.

The values are checked by the rules every edge shares (`messages._limits`):
a deadline is plain decimal seconds (`float()` would also take `1_0`, `1e1`,
`+5`, `inf` or `nan`), an id is 1-128 of `A-Za-z0-9._:-`, and trace context
that is not valid W3C is dropped (a new trace starts), not refused.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Final

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


def request_metadata(
    headers: Mapping[str, str], *, default_timeout: float, max_timeout: float
) -> Metadata:
    """The metadata a request's `headers` ask for.

    Raises:
        BadRequest: `X-Request-Timeout`, `X-Request-Id` or `X-Priority` has
            a bad value.
    """
    timeout = default_timeout
    raw = headers.get(TIMEOUT_HEADER)
    if raw is not None:
        timeout = parse_decimal(raw, what="X-Request-Timeout")
        if not 0 < timeout <= max_timeout:
            msg = f"X-Request-Timeout must be seconds in (0, {max_timeout:g}], not {raw}"
            raise BadRequest(msg)
    # An empty X-Request-Id is no id: the request gets a fresh one.
    request_id = check_identifier(
        headers.get(REQUEST_ID_HEADER) or new_message_id(), what="X-Request-Id"
    )
    priority = headers.get(PRIORITY_HEADER, Priority.DEFAULT)
    if priority not in Priority.__members__.values():
        msg = f"X-Priority must be one of {', '.join(p.value for p in Priority)}"
        raise BadRequest(msg)
    traceparent = valid_traceparent(headers.get("traceparent"))
    return Metadata(
        id=request_id,
        deadline=time.time() + timeout,
        priority=Priority(priority),
        sender="http",
        traceparent=traceparent,
        tracestate=valid_tracestate(headers.get("tracestate"), traceparent),
    )
