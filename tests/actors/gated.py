"""Helpers for admission tests: an agent held busy on a gate, an answer given at once."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import pytest

from actors import AgentRef, Reply
from messages import Overloaded
from tests.agents import Block, gate
from tests.conftest import WAIT


@contextlib.contextmanager
def held(ref: AgentRef, name: str) -> Iterator[None]:
    """Keep the agent `ref` reaches busy on a gated handler until the block ends."""
    entered, release = gate(name)
    blocked = ref.ask_async(Block(gate=name))
    try:
        assert entered.wait(WAIT)
        yield
    finally:
        release.set()
    assert blocked.get(timeout=WAIT) == name


def refusal(reply: Reply[Any]) -> Overloaded:
    """The `Overloaded` a reply was already settled with."""
    assert reply.done(), "the request was not answered at once"
    with pytest.raises(Overloaded) as info:
        reply.get(timeout=0)
    return info.value
