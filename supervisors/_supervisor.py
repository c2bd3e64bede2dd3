"""`Supervisor`: the handle callers and parent supervisors hold."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from typing import Any, Final

import pykka

from actors import ExitListener, ExitReason, Runtime
from messages import ExitKind, SupervisorStopped
from supervisors._spec import ChildHandle, ChildKind, ChildSpec, Restart, SupervisorSpec
from supervisors._stats import ChildStatistics, IntensityWindow, SupervisorStatistics
from supervisors._supervisor_actor import START_TIMEOUT, Invoke, SupervisorActor

logger: Final = logging.getLogger("actorfleet.supervisor")


class Supervisor:
    """A running supervisor; also the handle its own parent supervises it by.

    Start one with `Supervisor.start(spec, runtime)`, which returns once the
    initial children are up (or raises `StartFailed`, having stopped those
    that started).
    """

    def __init__(self, actor: SupervisorActor) -> None:
        self._actor = actor
        self._ref = actor.actor_ref
        self.name = actor.spec.name

    @classmethod
    def start(
        cls, spec: SupervisorSpec, runtime: Runtime, *, timeout: float = START_TIMEOUT
    ) -> Supervisor:
        """Start a supervisor and its initial children.

        Raises:
            StartFailed: If a child could not be started.
        """
        actor = SupervisorActor(spec, runtime)
        actor.start()
        supervisor = cls(actor)
        supervisor._call(actor.init, timeout=timeout)
        return supervisor

    def _call(self, fn: Callable[[], Any], *, timeout: float | None) -> Any:
        try:
            return self._ref.ask(Invoke(fn), timeout=timeout)
        except pykka.ActorDeadError as exc:
            raise SupervisorStopped(self.name) from exc

    # --- the ChildHandle protocol -----------------------------------------------------

    @property
    def alive(self) -> bool:
        """Whether the supervisor is running."""
        return not self._actor.exit_link.exited

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` when the supervisor exits."""
        self._actor.exit_link.link(listener)

    def shutdown(self, *, timeout: float = math.inf) -> None:
        """Stop children in reverse start order, then the supervisor."""
        reason = ExitReason(ExitKind.SHUTDOWN)
        with contextlib.suppress(SupervisorStopped):
            self._call(lambda: self._actor.shutdown(reason), timeout=None)
        self._actor.exit_link.wait(timeout=None if math.isinf(timeout) else timeout)

    def kill(self) -> None:
        """Kill every child at once, then stop."""
        try:
            self._ref.tell(Invoke(self._actor.kill_all))
        except pykka.ActorDeadError:
            logger.debug("supervisor %s already stopped", self.name)

    # --- the OTP supervisor API ---------------------------------------------------------

    def start_child(self, spec: ChildSpec, *, timeout: float | None = START_TIMEOUT) -> ChildHandle:
        """Start and add a child at run time (e.g. grow a pool)."""
        result: ChildHandle = self._call(lambda: self._actor.add_child(spec), timeout=timeout)
        return result

    def terminate_child(self, child_id: str, *, timeout: float | None = None) -> None:
        """Stop a child; its spec stays until `delete_child` (a temporary child's does not)."""
        self._call(lambda: self._actor.terminate_child(child_id), timeout=timeout)

    def restart_child(self, child_id: str, *, timeout: float | None = START_TIMEOUT) -> ChildHandle:
        """Start again a child that was terminated."""
        result: ChildHandle = self._call(
            lambda: self._actor.restart_child(child_id), timeout=timeout
        )
        return result

    def delete_child(self, child_id: str, *, timeout: float | None = START_TIMEOUT) -> None:
        """Remove a terminated child's spec."""
        self._call(lambda: self._actor.delete_child(child_id), timeout=timeout)

    def which_children(self, *, timeout: float | None = START_TIMEOUT) -> dict[str, ChildHandle]:
        """Running children by id, in start order."""
        result: dict[str, ChildHandle] = self._call(self._actor.handles, timeout=timeout)
        return result

    def statistics(self, *, timeout: float | None = START_TIMEOUT) -> SupervisorStatistics:
        """The live tree below this supervisor (its exit, once it has stopped)."""
        try:
            stats, nested = self._call(self._actor.snapshot, timeout=timeout)
        except SupervisorStopped:
            return self._stopped_statistics()
        trees = {
            child_id: handle.statistics(timeout=timeout)
            for child_id, handle in nested.items()
            if isinstance(handle, Supervisor)
        }
        children = [_with_tree(c, trees[c.id]) if c.id in trees else c for c in stats.children]
        return SupervisorStatistics(
            name=stats.name,
            strategy=stats.strategy,
            status=stats.status,
            intensity=stats.intensity,
            children=children,
        )

    def _stopped_statistics(self) -> SupervisorStatistics:
        spec = self._actor.spec
        self._actor.exit_link.wait(timeout=START_TIMEOUT)
        return SupervisorStatistics(
            name=self.name,
            strategy=spec.strategy,
            status="stopped",
            intensity=IntensityWindow(
                restarts=0, max_restarts=spec.max_restarts, period=spec.period
            ),
            children=[],
            exit_reason=str(self._actor.exit_link.reason),
        )

    def wait(self, *, timeout: float | None = None) -> ExitReason | None:
        """Wait for the supervisor to exit; return why, or None on timeout."""
        self._actor.exit_link.wait(timeout=timeout)
        return self._actor.exit_link.reason

    @property
    def exit_reason(self) -> ExitReason | None:
        """Why the supervisor exited, once it has."""
        return self._actor.exit_link.reason

    def __repr__(self) -> str:
        return f"<Supervisor {self.name}>"


def _with_tree(child: ChildStatistics, tree: SupervisorStatistics) -> ChildStatistics:
    return ChildStatistics(
        id=child.id,
        kind=ChildKind.SUPERVISOR,
        restart=child.restart,
        status=child.status,
        restarts=child.restarts,
        last_exit=child.last_exit,
        supervisor=tree,
    )


def supervisor_child(
    spec: SupervisorSpec, runtime: Runtime, *, restart: Restart = Restart.PERMANENT
) -> ChildSpec:
    """A child spec that starts a nested supervisor (shutdown waits for its tree)."""

    def start() -> ChildHandle:
        return Supervisor.start(spec, runtime)

    return ChildSpec(
        id=spec.name, start=start, restart=restart, shutdown=math.inf, kind=ChildKind.SUPERVISOR
    )
