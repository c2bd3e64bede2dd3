"""The supervisor actor: starts, watches and restarts its children on its own thread."""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pykka

from actors import ExitLink, ExitListener, ExitReason, LocalAgentRef, Runtime
from messages import (
    ChildAlreadyExists,
    ChildExited,
    ChildNotFound,
    ChildRestarted,
    ChildStarted,
    Escalated,
    ExitKind,
    StartFailed,
)
from supervisors._process import ProcessChild
from supervisors._spec import ChildHandle, ChildKind, ChildSpec, Restart, Strategy, SupervisorSpec
from supervisors._stats import ChildStatistics, ChildStatus, IntensityWindow, SupervisorStatistics

if TYPE_CHECKING:
    from collections.abc import Callable

logger: Final = logging.getLogger("actorfleet.supervisor")

START_TIMEOUT: Final = 30.0
ESCALATION: Final = ExitReason(ExitKind.SHUTDOWN, "reached maximum restart intensity")


class _Child:
    """The supervisor's record of one child (mutated only on its thread)."""

    __slots__ = (
        "consecutive",
        "handle",
        "incarnation",
        "last_exit",
        "last_restart",
        "restarts",
        "spec",
        "status",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.handle: ChildHandle | None = None
        self.incarnation = 0
        self.status = ChildStatus.STOPPED
        self.restarts = 0
        self.consecutive = 0
        self.last_restart = -math.inf
        self.last_exit: ExitReason | None = None


@dataclass(frozen=True, slots=True)
class _Exited:
    child_id: str
    incarnation: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class _RestartDue:
    epoch: int
    delay: float


@dataclass(frozen=True, slots=True)
class Invoke:
    """A request from the Supervisor handle, run on the supervisor's thread."""

    fn: Callable[[], Any]


class SupervisorActor(pykka.ThreadingActor):
    """The actor behind a `Supervisor`; use `Supervisor.start`, not this class."""

    def __init__(self, spec: SupervisorSpec, runtime: Runtime) -> None:
        super().__init__()
        self.spec = spec
        self.runtime = runtime
        self.exit_link = ExitLink()
        self.exit_reason = ExitReason(ExitKind.SHUTDOWN)
        self.children: list[_Child] = []
        self._restart_times: deque[float] = deque()
        self._pending: set[str] = set()
        self._epoch = 0

    # --- messages ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Exited(child_id, incarnation, reason):
                self._on_exit(child_id, incarnation, reason)
            case _RestartDue(epoch, delay) if epoch == self._epoch:
                self._restart_pending(delay)
            case _RestartDue():
                pass
            case Invoke(fn):
                return fn()
            case _:
                return super().on_receive(message)
        return None

    # --- starting ---------------------------------------------------------------

    def init(self) -> None:
        """Start the initial children in order; on failure stop those started."""
        for spec in self.spec.children:
            try:
                self.add_child(spec)
            except StartFailed:
                self.exit_reason = ExitReason(ExitKind.SHUTDOWN, f"child {spec.id} failed")
                self._stop()
                raise

    def add_child(self, spec: ChildSpec) -> ChildHandle:
        """Start a new child and add it after the others."""
        if self._find(spec.id) is not None:
            raise ChildAlreadyExists(self.spec.name, spec.id)
        child = _Child(spec)
        handle = self._start(child)
        self.children.append(child)
        return handle

    def _start(self, child: _Child) -> ChildHandle:
        try:
            handle = child.spec.start()
        except Exception as exc:
            logger.exception("supervisor %s: starting %s failed", self.spec.name, child.spec.id)
            raise StartFailed(child.spec.id, f"{type(exc).__name__}: {exc}") from exc
        child.incarnation += 1
        child.handle = handle
        child.status = ChildStatus.RUNNING
        handle.link(self._listener(child.spec.id, child.incarnation))
        self.runtime.events.publish(
            ChildStarted(
                supervisor=self.spec.name,
                child_id=child.spec.id,
                kind=child.spec.kind,
                incarnation=child.incarnation,
            )
        )
        return handle

    def _listener(self, child_id: str, incarnation: int) -> ExitListener:
        me = self.actor_ref

        def on_exit(reason: ExitReason) -> None:
            try:
                me.tell(_Exited(child_id, incarnation, reason))
            except pykka.ActorDeadError:
                logger.debug("supervisor gone; exit of %s not delivered", child_id)

        return on_exit

    # --- exits and restarts -------------------------------------------------------

    def _on_exit(self, child_id: str, incarnation: int, reason: ExitReason) -> None:
        child = self._find(child_id)
        if child is None or child.incarnation != incarnation or child.handle is None:
            return  # an old incarnation, or one this supervisor stopped itself
        child.handle = None
        child.last_exit = reason
        child.status = ChildStatus.STOPPED
        self.runtime.events.publish(
            ChildExited(
                supervisor=self.spec.name,
                child_id=child_id,
                reason=reason.kind,
                detail=reason.detail,
            )
        )
        if child.spec.restart is Restart.TEMPORARY:
            self.children.remove(child)
        elif child.spec.restart is Restart.PERMANENT or not reason.kind.is_normal:
            self._restart(child)

    def _restart(self, failed: _Child) -> None:
        now = time.monotonic()
        window = self._restart_times
        window.append(now)
        while window and window[0] <= now - self.spec.period:
            window.popleft()
        if len(window) > self.spec.max_restarts:
            self._escalate()
            return
        self._stop_group(failed)
        if now - failed.last_restart > self.spec.backoff.reset_after:
            failed.consecutive = 0
        delay = self.spec.backoff.delay(failed.consecutive)
        failed.consecutive += 1
        failed.last_restart = now
        if delay <= 0:
            self._restart_pending(delay)
        else:
            self._restart_later(delay)

    def _stop_group(self, failed: _Child) -> None:
        """Stop the failed child's group (reverse order) and mark it for restart."""
        group = self._group(failed)
        for child in reversed(group):
            if child is not failed:
                self._terminate(child)
        for child in group:
            if child is not failed and child.spec.restart is Restart.TEMPORARY:
                self.children.remove(child)
            else:
                child.status = ChildStatus.RESTARTING
                self._pending.add(child.spec.id)

    def _restart_later(self, delay: float) -> None:
        epoch = self._epoch
        me = self.actor_ref

        def due() -> None:
            try:
                me.tell(_RestartDue(epoch, delay))
            except pykka.ActorDeadError:
                logger.debug("supervisor %s stopped before a delayed restart", self.spec.name)

        self.runtime.timers.call_later(delay, due)

    def _group(self, failed: _Child) -> list[_Child]:
        if self.spec.strategy is Strategy.ONE_FOR_ALL:
            return list(self.children)
        if self.spec.strategy is Strategy.REST_FOR_ONE:
            return self.children[self.children.index(failed) :]
        return [failed]

    def _restart_pending(self, delay: float) -> None:
        for child in list(self.children):
            if child.spec.id not in self._pending:
                continue
            self._pending.discard(child.spec.id)
            try:
                self._start(child)
            except StartFailed as exc:
                child.last_exit = ExitReason(ExitKind.CRASHED, exc.cause)
                self._restart(child)
                if self.actor_stopped.is_set():
                    return
                continue
            child.restarts += 1
            self.runtime.events.publish(
                ChildRestarted(
                    supervisor=self.spec.name,
                    child_id=child.spec.id,
                    restarts=child.restarts,
                    delay=delay,
                )
            )

    def _escalate(self) -> None:
        logger.error(
            "supervisor %s: more than %d restarts in %.1f s; giving up",
            self.spec.name,
            self.spec.max_restarts,
            self.spec.period,
        )
        self.runtime.events.publish(
            Escalated(
                supervisor=self.spec.name,
                restarts=len(self._restart_times),
                period=self.spec.period,
            )
        )
        self.exit_reason = ESCALATION
        self._stop()

    # --- stopping -------------------------------------------------------------------

    def _terminate(self, child: _Child) -> None:
        handle, child.handle = child.handle, None
        child.status = ChildStatus.STOPPED
        self._pending.discard(child.spec.id)
        if handle is not None:
            if child.spec.shutdown == 0:
                handle.kill()
            handle.shutdown(timeout=child.spec.shutdown)

    def terminate_all(self) -> None:
        """Stop every child in reverse start order; cancel pending restarts."""
        self._epoch += 1
        self._pending.clear()
        for child in reversed(self.children):
            self._terminate(child)

    def shutdown(self, reason: ExitReason) -> None:
        """Stop all children, then this supervisor."""
        self.exit_reason = reason
        self._stop()

    def kill_all(self) -> None:
        """Kill every child at once, then stop."""
        self._epoch += 1
        self._pending.clear()
        for child in reversed(self.children):
            handle, child.handle = child.handle, None
            child.status = ChildStatus.STOPPED
            if handle is not None:
                handle.kill()
        self.exit_reason = ExitReason(ExitKind.KILLED)
        self._stop()

    def on_stop(self) -> None:
        """Stop the children first, in reverse order, however the supervisor stops."""
        self.terminate_all()

    def _actor_loop_teardown(self) -> None:
        super()._actor_loop_teardown()
        self.exit_link.exit(self.exit_reason)

    def _handle_failure(self, *exc_info: Any) -> None:
        super()._handle_failure(*exc_info)
        self.exit_reason = ExitReason(ExitKind.CRASHED, repr(exc_info[1]))
        for child in reversed(self.children):
            handle, child.handle = child.handle, None
            if handle is not None:
                handle.kill()

    # --- dynamic children -------------------------------------------------------------

    def terminate_child(self, child_id: str) -> None:
        """Stop a child and keep its spec (OTP terminate_child)."""
        child = self._require(child_id)
        self._terminate(child)

    def restart_child(self, child_id: str) -> ChildHandle:
        """Start a child that was terminated (OTP restart_child)."""
        child = self._require(child_id)
        if child.handle is not None or child.status is ChildStatus.RESTARTING:
            raise ChildAlreadyExists(self.spec.name, child_id)
        return self._start(child)

    def delete_child(self, child_id: str) -> None:
        """Forget a stopped child's spec (OTP delete_child)."""
        child = self._require(child_id)
        if child.handle is not None or child.status is ChildStatus.RESTARTING:
            raise ChildAlreadyExists(self.spec.name, child_id)
        self.children.remove(child)

    def handles(self) -> dict[str, ChildHandle]:
        """The running children's handles, by id, in start order."""
        return {c.spec.id: c.handle for c in self.children if c.handle is not None}

    def snapshot(self) -> tuple[SupervisorStatistics, dict[str, ChildHandle]]:
        """This supervisor's own statistics and its running supervisor children."""
        now = time.monotonic()
        in_window = sum(1 for t in self._restart_times if t > now - self.spec.period)
        children = [_child_statistics(c) for c in self.children]
        nested = {
            c.spec.id: c.handle
            for c in self.children
            if c.handle is not None and c.spec.kind is ChildKind.SUPERVISOR
        }
        stats = SupervisorStatistics(
            name=self.spec.name,
            strategy=self.spec.strategy,
            status="running",
            intensity=IntensityWindow(
                restarts=in_window, max_restarts=self.spec.max_restarts, period=self.spec.period
            ),
            children=children,
        )
        return stats, nested

    def _find(self, child_id: str) -> _Child | None:
        for child in self.children:
            if child.spec.id == child_id:
                return child
        return None

    def _require(self, child_id: str) -> _Child:
        child = self._find(child_id)
        if child is None:
            raise ChildNotFound(self.spec.name, child_id)
        return child


def _child_statistics(child: _Child) -> ChildStatistics:
    handle = child.handle
    return ChildStatistics(
        id=child.spec.id,
        kind=child.spec.kind,
        restart=child.spec.restart,
        status=child.status,
        restarts=child.restarts,
        last_exit=None if child.last_exit is None else str(child.last_exit),
        queue_depth=handle.queue_depth if isinstance(handle, LocalAgentRef) else None,
        pid=handle.pid if isinstance(handle, ProcessChild) else None,
        detail=handle.detail if isinstance(handle, LocalAgentRef) else None,
    )
