"""Child specs, restart types, strategies and backoff, in Erlang/OTP's terms."""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

from messages import ConfigError

if TYPE_CHECKING:
    from actors import Agent, ExitListener, Runtime

DEFAULT_SHUTDOWN: Final = 5.0
DEFAULT_MAX_RESTARTS: Final = 3
DEFAULT_PERIOD: Final = 5.0


class Restart(enum.StrEnum):
    """When a child that exited is restarted.

    `permanent`: always. `transient`: only after an abnormal exit (not
    `normal` or `shutdown`). `temporary`: never; it is removed when it exits.
    """

    PERMANENT = "permanent"
    TRANSIENT = "transient"
    TEMPORARY = "temporary"


class Strategy(enum.StrEnum):
    """Which children restart when one fails.

    `one_for_one`: only the failed child. `one_for_all`: all children (the
    others are stopped first, in reverse start order). `rest_for_one`: the
    failed child and every child started after it.
    """

    ONE_FOR_ONE = "one_for_one"
    ONE_FOR_ALL = "one_for_all"
    REST_FOR_ONE = "rest_for_one"


class ChildKind(enum.StrEnum):
    """What a child is: an actor in this process, an OS process, or a supervisor."""

    ACTOR = "actor"
    PROCESS = "process"
    SUPERVISOR = "supervisor"


class ChildHandle(Protocol):
    """What a supervisor needs from a running child."""

    @property
    def alive(self) -> bool:
        """Whether the child is still running."""
        ...

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` once, when the child exits (now, if it has)."""
        ...

    def shutdown(self, *, timeout: float) -> None:
        """Stop gracefully; kill if that takes longer than `timeout`. Blocks until stopped.

        A supervisor does not rely on this call to return: it waits for the
        exit itself, and kills the child once `timeout` has passed.
        """
        ...

    def kill(self) -> None:
        """Stop at once."""
        ...


@dataclass(frozen=True, kw_only=True, slots=True)
class ChildSpec:
    """How to start a child and what to do when it exits.

    Attributes:
        id: Unique among the supervisor's children.
        start: Starts the child and returns its handle.
        restart: Restart type.
        shutdown: Seconds a graceful stop may take before the supervisor
            kills the child (0: kill at once; `math.inf`: wait without a bound,
            OTP's `infinity`, as for supervisors).
        kind: What the child is, for statistics and defaults.
    """

    id: str
    start: Callable[[], ChildHandle]
    restart: Restart = Restart.PERMANENT
    shutdown: float = DEFAULT_SHUTDOWN
    kind: ChildKind = ChildKind.ACTOR

    def __post_init__(self) -> None:
        if not self.id:
            raise ConfigError("child.id", "must not be empty")
        if self.shutdown < 0:
            raise ConfigError(f"child[{self.id}].shutdown", "must be >= 0")


def agent_child(
    agent_class: type[Agent],
    runtime: Runtime,
    *,
    id: str | None = None,  # noqa: A002 - OTP's name for it
    restart: Restart = Restart.PERMANENT,
    shutdown: float = DEFAULT_SHUTDOWN,
    **kwargs: Any,
) -> ChildSpec:
    """A child spec that spawns one agent of `agent_class`.

    Each incarnation is named `<type>/<id>`, so a restarted agent keeps its name.
    """
    child_id = id or agent_class.agent_type

    def start() -> ChildHandle:
        return agent_class.spawn(runtime, instance=child_id, **kwargs)

    return ChildSpec(id=child_id, start=start, restart=restart, shutdown=shutdown)


@dataclass(frozen=True, kw_only=True, slots=True)
class Backoff:
    """Delay before restarting a child that keeps failing.

    The first restart is immediate; the n-th consecutive one waits
    `base * factor**(n-1)` seconds, capped at `cap`, less a random share of
    up to `jitter` so that a fleet does not restart in lockstep. After
    `reset_after` quiet seconds the count starts over.
    """

    base: float = 0.01
    factor: float = 2.0
    cap: float = 2.0
    jitter: float = 0.25
    reset_after: float = 10.0

    def __post_init__(self) -> None:
        if self.base < 0 or self.cap < 0 or self.reset_after < 0:
            raise ConfigError("backoff", "base, cap and reset_after must be >= 0")
        if self.factor < 1:
            raise ConfigError("backoff.factor", "must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError("backoff.jitter", "must be between 0 and 1")

    def delay(self, consecutive: int) -> float:
        """Seconds to wait before restart number `consecutive` (0-based) in a row."""
        if consecutive <= 0:
            return 0.0
        raw = min(self.cap, self.base * self.factor ** (consecutive - 1))
        return raw * (1.0 - self.jitter * random.random())


@dataclass(frozen=True, kw_only=True, slots=True)
class SupervisorSpec:
    """A supervisor: its strategy, intensity, backoff and initial children.

    Attributes:
        name: Name in the tree and in events.
        strategy: Which children restart together.
        children: Started in order, stopped in reverse order.
        max_restarts: More restarts than this within `period` seconds make
            the supervisor stop its children and exit (escalation).
        period: The intensity window, in seconds.
        backoff: Delay policy between consecutive restarts of a child.
    """

    name: str
    strategy: Strategy = Strategy.ONE_FOR_ONE
    children: Sequence[ChildSpec] = ()
    max_restarts: int = DEFAULT_MAX_RESTARTS
    period: float = DEFAULT_PERIOD
    backoff: Backoff = field(default_factory=Backoff)

    def __post_init__(self) -> None:
        if self.max_restarts < 0:
            raise ConfigError(f"supervisor[{self.name}].max_restarts", "must be >= 0")
        if not self.period > 0 or math.isinf(self.period):
            raise ConfigError(f"supervisor[{self.name}].period", "must be a positive number")
        ids = [child.id for child in self.children]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ConfigError(f"supervisor[{self.name}].children", f"duplicate ids {duplicates}")
