"""Agents every node can run."""

from __future__ import annotations

from actors._agent import Agent, handler
from actors._context import Context
from messages import Ping, Pong


class PingAgent(Agent):
    """Answers `Ping` with `Pong`: a liveness probe that crosses the whole request path."""

    @handler
    def ping(self, msg: Ping, ctx: Context) -> Pong:  # noqa: ARG002 - handler signature
        """Echo the payload and say who answered."""
        return Pong(payload=msg.payload, responder=self.name)
