"""The supervisor actor: starts, watches and restarts its children on its own thread."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import pykka

from actors import ExitListener, ExitReason, Runtime
from actors._actor import Actor
from messages import (
    ActorfleetError,
    ChildAlreadyExists,
    ChildExited,
    ChildNotFound,
    ChildRestarted,
    ChildStarted,
    Escalated,
    ExitKind,
    StartFailed,
)
from supervisors._child import Child
from supervisors._shutdown import stop_child
from supervisors._spec import ChildHandle, ChildKind, ChildSpec, Restart, Strategy, SupervisorSpec
from supervisors._stats import ChildStatus, IntensityWindow, SupervisorStatistics

if TYPE_CHECKING:
    from collections.abc import Callable

logger: Final = logging.getLogger("actorfleet.supervisor")

START_TIMEOUT: Final = 30.0
ESCALATION: Final = ExitReason(ExitKind.SHUTDOWN, "reached maximum restart intensity")


@dataclass(frozen=True, slots=True)
class _Exited:
    child_id: str
    incarnation: int
    reason: ExitReason


@dataclass(frozen=True, slots=True)
class _RestartDue:
    """A child's backoff is over (stale unless `timer` is still the child's)."""

    child_id: str
    timer: int
    due: float


@dataclass(frozen=True, slots=True)
class Invoke:
    """A request from the Supervisor handle, run on the supervisor's thread."""

    fn: Callable[[], Any]


class SupervisorActor(Actor):
    """The actor behind a `Supervisor`; use `Supervisor.start`, not this class."""

    # A supervisor stopped from outside (`ActorRef.stop`, `stop_all`) shuts its tree down.
    stop_reason = ExitReason(ExitKind.SHUTDOWN)

    def __init__(self, spec: SupervisorSpec, runtime: Runtime) -> None:
        super().__init__(spec.name)
        self.spec = spec
        self.runtime = runtime
        self.children: list[Child] = []
        self._restart_times: deque[float] = deque()

    # --- messages ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Exited(child_id, incarnation, reason):
                self._on_exit(child_id, incarnation, reason)
            case _RestartDue(child_id, timer, due):
                self._on_restart_due(child_id, timer, due)
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
                self._finish(ExitReason(ExitKind.SHUTDOWN, f"child {spec.id} failed"))
                raise

    def add_child(self, spec: ChildSpec) -> ChildHandle:
        """Start a new child and add it after the others."""
        if self._find(spec.id) is not None:
            raise ChildAlreadyExists(self.spec.name, spec.id)
        child = Child(spec)
        handle = self._start(child)
        self.children.append(child)
        return handle

    def _start(self, child: Child) -> ChildHandle:
        try:
            handle = child.spec.start()
        except StartFailed:
            raise  # a child supervisor's: it said which of its children, and why
        except ActorfleetError as exc:
            # An expected failure (a port in use, a server down, bad config)
            # says what to do in its message: one line, no traceback.
            logger.error(  # noqa: TRY400 - the traceback is noise here
                "supervisor %s: starting %s failed: %s", self.spec.name, child.spec.id, exc
            )
            raise StartFailed(child.spec.id, str(exc)) from exc
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
            now = time.monotonic()
            self._restart(child, now)
            self._restart_due(now)

    def _restart(self, failed: Child, now: float) -> None:
        """Count a restart, stop the failed child's group and plan its restart."""
        if self._over_intensity(now):
            self._escalate()
            return
        group = self._stop_group(failed)
        delay = self._backoff(failed, now)
        for child in group:
            if child.plan_restart(now + delay, delay) and delay > 0:
                self._arm(child, now + delay)

    def _over_intensity(self, now: float) -> bool:
        window = self._restart_times
        window.append(now)
        while window and window[0] <= now - self.spec.period:
            window.popleft()
        return len(window) > self.spec.max_restarts

    def _backoff(self, failed: Child, now: float) -> float:
        if now - failed.last_restart > self.spec.backoff.reset_after:
            failed.consecutive = 0
        delay = self.spec.backoff.delay(failed.consecutive)
        failed.consecutive += 1
        failed.last_restart = now
        return delay

    def _stop_group(self, failed: Child) -> list[Child]:
        """Stop the failed child's group in reverse order; return those to restart.

        A member already waiting out a restart of its own keeps waiting.
        """
        group = self._group(failed)
        for child in reversed(group):
            if child is not failed and child.handle is not None:
                self._terminate(child)
        restarting = []
        for child in group:
            if child is not failed and child.spec.restart is Restart.TEMPORARY:
                self.children.remove(child)
            else:
                restarting.append(child)
        return restarting

    def _arm(self, child: Child, due: float) -> None:
        message = _RestartDue(child.spec.id, child.timer, due)
        me = self.actor_ref

        def fire() -> None:
            try:
                me.tell(message)
            except pykka.ActorDeadError:
                logger.debug("supervisor %s stopped before a delayed restart", self.spec.name)

        self.runtime.timers.call_at(due, fire)

    def _group(self, failed: Child) -> list[Child]:
        if self.spec.strategy is Strategy.ONE_FOR_ALL:
            return list(self.children)
        if self.spec.strategy is Strategy.REST_FOR_ONE:
            return self.children[self.children.index(failed) :]
        return [failed]

    def _on_restart_due(self, child_id: str, timer: int, due: float) -> None:
        child = self._find(child_id)
        if child is None or child.due is None or child.timer != timer:
            return  # stale: that restart already ran, was cancelled or was planned anew
        # The timer is the authority that `due` has come, whatever the clock reads.
        self._restart_due(max(time.monotonic(), due))

    def _restart_due(self, now: float) -> None:
        """Start the children whose restart is due at `now`, in start order.

        Under `one_for_all` and `rest_for_one` nothing starts after a child
        that still waits out its backoff, or that has just failed to start.
        """
        while (child := self._next_due(now)) is not None:
            self._restart_one(child, now)

    def _next_due(self, now: float) -> Child | None:
        in_order = self.spec.strategy is not Strategy.ONE_FOR_ONE
        for child in self.children:
            if child.due is None:
                continue
            if child.due <= now:
                return child
            if in_order:
                return None
        return None

    def _restart_one(self, child: Child, now: float) -> None:
        child.cancel_restart()
        try:
            self._start(child)
        except StartFailed as exc:
            child.last_exit = ExitReason(ExitKind.CRASHED, exc.cause)
            self._restart(child, now)
            return
        child.restarts += 1
        self.runtime.events.publish(
            ChildRestarted(
                supervisor=self.spec.name,
                child_id=child.spec.id,
                restarts=child.restarts,
                delay=child.delay,
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
        self._finish(ESCALATION)

    # --- stopping -------------------------------------------------------------------

    def _terminate(self, child: Child) -> None:
        """Stop a child within its shutdown time (then kill it); cancel its restart."""
        handle, child.handle = child.handle, None
        child.status = ChildStatus.STOPPED
        child.cancel_restart()
        if handle is not None:
            stop_child(handle, shutdown=child.spec.shutdown, name=child.spec.id)

    def terminate_all(self) -> None:
        """Stop every child in reverse start order; cancel pending restarts."""
        for child in reversed(self.children):
            self._terminate(child)

    def shutdown(self, reason: ExitReason) -> None:
        """Stop all children, then this supervisor."""
        self._finish(reason)

    def kill_all(self) -> None:
        """Kill every child at once, then stop."""
        self._kill_children()
        self._finish(ExitReason(ExitKind.KILLED))

    def _kill_children(self) -> None:
        for child in reversed(self.children):
            handle, child.handle = child.handle, None
            child.status = ChildStatus.STOPPED
            child.cancel_restart()
            if handle is not None:
                handle.kill()

    def on_stop(self) -> None:
        """Stop the children first, in reverse order, when the supervisor stops."""
        self.terminate_all()

    def _crash(self, error: BaseException) -> None:
        """A supervisor that fails takes its children down at once, then exits crashed."""
        self._kill_children()
        super()._crash(error)

    # --- dynamic children -------------------------------------------------------------

    def terminate_child(self, child_id: str) -> None:
        """Stop a child and keep its spec, unless it is temporary (OTP terminate_child)."""
        child = self._require(child_id)
        self._terminate(child)
        if child.spec.restart is Restart.TEMPORARY:
            self.children.remove(child)
        self._restart_due(time.monotonic())  # those it held back in start order may go

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
        children = [c.statistics() for c in self.children]
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

    def _find(self, child_id: str) -> Child | None:
        for child in self.children:
            if child.spec.id == child_id:
                return child
        return None

    def _require(self, child_id: str) -> Child:
        child = self._find(child_id)
        if child is None:
            raise ChildNotFound(self.spec.name, child_id)
        return child
