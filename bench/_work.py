"""The agents `bench/agent_shedding.py` serves: fixed simulated work per request."""

from __future__ import annotations

import time
from typing import Final

from actors import Agent, Context, handler
from messages import Ping, Pong

SERVICE_S: Final = 0.02


class WorkAgent(Agent):
    """Answers `Ping` after `SERVICE_S` of simulated work (a sleep, like a remote call)."""

    agent_type = "work"

    @handler
    def work(self, msg: Ping, ctx: Context) -> Pong:
        time.sleep(SERVICE_S)
        return Pong(payload=msg.payload, responder=self.name)


class UnboundedWorkAgent(WorkAgent):
    """The same work, as a type whose requests are all queued (the baseline)."""

    agent_type = "unbounded"
