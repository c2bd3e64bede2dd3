"""The actor loop agents and supervisors run on: one thread serving one `Mailbox`.

pykka's `ThreadingActor` serves an inbox of its own making, and only its
private methods can replace it; agents need the priority lanes of `Mailbox`
and a death that answers everything queued at once, so they run this loop,
which keeps pykka's contract:

* `on_start` runs on the actor's thread before the first message, `on_stop`
  after a graceful stop; an exception from either, or from a message that
  nobody waits on, crashes the actor (`on_stop` is then not called);
* a message to a stopped actor raises `pykka.ActorDeadError`, and asks are
  answered through `pykka.ThreadingFuture`s;
* `stop_all` stops every running actor, newest first, as
  `pykka.ActorRegistry.stop_all` does.

However an actor ends (a stop, a crash, a kill from another thread), `_die`
runs once: the mailbox closes, what was queued is answered, and `exit_link`
tells those linked to it why.
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import TYPE_CHECKING, Any, ClassVar, Final

import pykka

from actors._call import Call
from actors._lifecycle import NORMAL, ExitLink, ExitReason
from actors._mailbox import WAKE_UP, Envelope, Item, Mailbox
from messages import AgentStopped, ExitKind

if TYPE_CHECKING:
    from pykka import Future

logger: Final = logging.getLogger("actorfleet.actor")


class _Stop:
    """The message that asks an actor to stop once it has served what is queued before it."""

    def __repr__(self) -> str:
        return "STOP"


STOP: Final = _Stop()

_running: dict[Actor, None] = {}  # an ordered set: oldest first
_running_lock: Final = threading.Lock()


def running() -> list[Actor]:
    """The actors started and not yet dead, oldest first."""
    with _running_lock:
        return list(_running)


def stop_all(*, timeout: float | None = None) -> list[bool]:
    """Stop every running actor gracefully, newest first, each within `timeout`.

    Returns:
        For each actor, whether it was still running when asked.

    Raises:
        pykka.Timeout: If an actor has not stopped within `timeout`.
    """
    return [actor.actor_ref.stop(timeout=timeout) for actor in reversed(running())]


class ActorRef:
    """What other threads hold to message an actor (pykka's `ActorRef` calls)."""

    __slots__ = ("_mailbox", "name")

    def __init__(self, mailbox: Mailbox, name: str) -> None:
        self._mailbox = mailbox
        self.name = name

    def is_alive(self) -> bool:
        """Whether the actor still takes messages."""
        return not self._mailbox.closed

    def tell(self, message: Any) -> None:
        """Queue `message` for the actor; nobody waits for an answer.

        Raises:
            pykka.ActorDeadError: If the actor has stopped.
        """
        self._mailbox.put(Envelope(message))

    def ask(self, message: Any, *, timeout: float | None = None) -> Any:
        """Queue `message` and wait for what handling it returns (or raises).

        Raises:
            pykka.ActorDeadError: If the actor stopped before handling it.
            pykka.Timeout: If there is no answer within `timeout`.
        """
        reply: pykka.ThreadingFuture[Any] = pykka.ThreadingFuture()
        self._mailbox.put(Envelope(message, reply))
        return reply.get(timeout=timeout)

    def stop(self, *, timeout: float | None = None) -> bool:
        """Stop the actor after what is queued before the stop; wait until it has died.

        Returns:
            True if it was running when asked, False if it had already stopped.

        Raises:
            pykka.Timeout: If it has not died within `timeout`.
        """
        try:
            stopped: bool = self.ask(STOP, timeout=timeout)
        except pykka.ActorDeadError:
            return False
        return stopped

    def __repr__(self) -> str:
        return f"<ActorRef {self.name}>"


class Actor:
    """One thread serving one `Mailbox`, with pykka's `on_start` and `on_stop` hooks.

    Construct it, then `start()` it: whatever needs the prepared instance
    (a directory, a handle) can take it in between.

    Args:
        name: What logs, errors and the thread call it.
    """

    # Why the actor exits after a graceful stop.
    stop_reason: ClassVar[ExitReason] = NORMAL

    def __init__(self, name: str) -> None:
        self.name = name
        self.exit_link = ExitLink()
        self.mailbox = Mailbox()
        self.mailbox.reject = _refuse
        self.actor_ref = ActorRef(self.mailbox, name)
        self._leaving: ExitReason | None = None
        self._dead = itertools.count()
        self._stop_replies: list[Future[Any]] = []

    def start(self) -> None:
        """Start the actor's thread (once)."""
        with _running_lock:
            _running[self] = None
        threading.Thread(target=self._live, name=self.name).start()

    def request_stop(self) -> bool:
        """Ask for a graceful stop after what is queued; False if already dead."""
        return self.mailbox.offer(Envelope(STOP))

    def on_start(self) -> None:
        """Run on the actor's thread before it takes its first message."""

    def on_stop(self) -> None:
        """Run on the actor's thread when it stops gracefully, before it dies."""

    def on_receive(self, message: Any) -> Any:
        """Handle a message told or asked through `actor_ref`; return the answer."""
        logger.warning("unexpected message received by %s: %r", self.name, message)

    def _on_call(self, call: Call) -> None:
        """Handle a request; only agents take them."""
        msg = f"{self.name} takes no requests ({type(call.payload).__name__})"
        raise TypeError(msg)

    def _live(self) -> None:
        try:
            self.on_start()
            self._serve()
        except Exception as error:  # noqa: BLE001 - a crash, told to whoever is linked
            self._crash(error)
        except BaseException as error:
            self._crash(error)
            raise
        finally:
            self._die(self._leaving or NORMAL)
            for reply in self._stop_replies:
                reply.set(True)

    def _serve(self) -> None:
        get, on_call = self.mailbox.get, self._on_call
        while self._leaving is None:
            item = get()
            if type(item) is Call:
                on_call(item)
            elif item is WAKE_UP:  # closed: it died from another thread
                return
            elif type(item) is Envelope:
                self._receive(item)

    def _receive(self, envelope: Envelope) -> None:
        reply = envelope.reply_to
        if envelope.message is STOP:
            if reply is not None:
                self._stop_replies.append(reply)
            self._finish(self.stop_reason)
            return
        try:
            answer = self.on_receive(envelope.message)
        except Exception:
            if reply is None:
                raise
            reply.set_exception()
        else:
            if reply is not None:
                reply.set(answer)

    def _finish(self, reason: ExitReason) -> None:
        """Stop after the message being handled, calling `on_stop` now; die with `reason`."""
        if self._leaving is not None:
            return
        self._leaving = reason
        try:
            self.on_stop()
        except Exception as error:  # noqa: BLE001 - a crash, told to whoever is linked
            self._crash(error)

    def _crash(self, error: BaseException) -> None:
        """Log the error that ended the loop, and die of it."""
        logger.error("%s crashed", self.name, exc_info=error)
        self._leaving = ExitReason(ExitKind.CRASHED, f"{type(error).__name__}: {error}")
        self._die(self._leaving)

    def _leave(self, reason: ExitReason) -> None:
        """Undo what makes the actor reachable, before its mailbox closes (see `_die`)."""

    def _die(self, reason: ExitReason) -> None:
        """Die now, from any thread: refuse messages, answer those queued, announce why.

        Only the first call counts. The actor's thread leaves its loop once
        the message it is handling (if any) is done.
        """
        if next(self._dead):
            return
        with _running_lock:
            _running.pop(self, None)
        self._leave(reason)
        refusal = AgentStopped(self.name, str(reason.kind))
        for item in self.mailbox.close():
            _answer_queued(item, refusal)
        self.exit_link.exit(reason)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


def _answer_queued(item: Item, refusal: AgentStopped) -> None:
    """Answer what a dying actor's mailbox still held."""
    if type(item) is Call:
        if item.reply is not None:
            item.reply.fail(refusal)
    elif type(item) is Envelope and item.reply_to is not None:
        if item.message is STOP:
            item.reply_to.set(True)  # it was running when asked, and has now stopped
        else:
            _answer_dead(item, str(refusal))


def _refuse(item: Item) -> None:
    """Answer a message that reached a mailbox after it closed."""
    if type(item) is Envelope and item.reply_to is not None:
        _answer_dead(item, "the actor has stopped")
        return
    msg = f"{item!r} was not delivered: the actor has stopped"
    raise pykka.ActorDeadError(msg)


def _answer_dead(envelope: Envelope, detail: str) -> None:
    if envelope.reply_to is not None:
        error = pykka.ActorDeadError(detail)
        envelope.reply_to.set_exception((pykka.ActorDeadError, error, None))
