"""Control messages: what a node or an operator says to an agent or a node."""

from __future__ import annotations

from messages._base import Message


class Ping(Message, frozen=True, kw_only=True):
    """Ask an agent or a node to prove it is alive."""

    payload: str = ""


class Pong(Message, frozen=True, kw_only=True):
    """The answer to `Ping`.

    Attributes:
        payload: The ping's payload, echoed.
        responder: Who answered (agent type and instance, or node name).
    """

    payload: str = ""
    responder: str = ""


class StopAgent(Message, frozen=True, kw_only=True):
    """Ask a node to stop a child gracefully (it finishes what is queued)."""

    child_id: str


class KillAgent(Message, frozen=True, kw_only=True):
    """Ask a node to kill a child at once (queued requests fail)."""

    child_id: str


class GetStatistics(Message, frozen=True, kw_only=True):
    """Ask a node for its supervision tree."""


ControlMessage = Ping | Pong | StopAgent | KillAgent | GetStatistics
