"""`DELETE /v1/users/{user_id}/data`: the right to be forgotten, at the HTTP edge.

Served when an agent of the node handles a request type named
`EraseUserData` (a `user_id` field; the reference service's `PrivacyAgent`):
the route asks that agent type and answers with its report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final

import msgspec
from litestar import Request, delete
from litestar.params import FromPath

from bridges.http._problems import PROBLEMS
from bridges.nats._serving import request_types
from messages import BadRequest, Message

if TYPE_CHECKING:
    from actors import Agent
    from bridges.http._host import Edge

ERASURE_REQUEST: Final = "EraseUserData"


def erasure_route(bridge: Edge, agents: Sequence[type[Agent]]) -> Any | None:
    """The erasure route, if one of `agents` handles `EraseUserData`; else None."""
    for agent_class in agents:
        for request_type in request_types(agent_class):
            if request_type.__name__ == ERASURE_REQUEST:
                return _route(bridge, agent_class.agent_type, request_type)
    return None


def _route(bridge: Edge, agent_type: str, request_type: type[Message]) -> Any:
    async def erase(request: Request[Any, Any, Any], user_id: FromPath[str]) -> Any:
        try:
            message = msgspec.convert({"user_id": user_id}, request_type)
        except msgspec.ValidationError as exc:
            msg = f"bad user id: {exc}"
            raise BadRequest(msg) from exc
        return await bridge.observed(
            agent_type,
            request,
            lambda meta: bridge.ask(
                request, agent_type, message, bridge.acting(request, agent_type, message, meta)
            ),
        )

    erase.__doc__ = (
        "Erase what the service keeps about a user: conversation memory is deleted,"
        " tickets are redacted, and the user's data key is destroyed so that their"
        " audit records can no longer be read. The erasure is recorded in the audit"
        " log without the user's id."
    )
    return delete(
        "/v1/users/{user_id:str}/data",
        name="erase-user-data",
        operation_id="erase_user_data",
        summary="Erase a user's data (right to be forgotten)",
        tags=["privacy"],
        status_code=200,
        responses=PROBLEMS,
        guards=bridge.guards(),
    )(erase)
