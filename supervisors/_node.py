"""A node: one root supervisor whose failure ends the process with a non-zero exit."""

from __future__ import annotations

import gc
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Final

from actors import ExitReason, Runtime
from messages import ExitKind
from supervisors._spec import SupervisorSpec
from supervisors._supervisor import Supervisor

logger: Final = logging.getLogger("actorfleet.node")

EXIT_OK: Final = 0
EXIT_ROOT_FAILED: Final = 1
_STOP_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)


class Node:
    """Runs a root supervisor until it is asked to stop or it fails.

    A requested stop (`stop()`, SIGTERM, SIGINT) shuts the tree down in
    reverse start order and `run()` returns 0. If the root supervisor exits
    on its own (its restart intensity was exceeded), `run()` returns 1, so
    that systemd or Kubernetes restarts the process.
    """

    def __init__(
        self, root: SupervisorSpec, runtime: Runtime | None = None, *, gc_freeze: bool = False
    ) -> None:
        self.runtime = runtime or Runtime()
        self._root_spec = root
        self._root: Supervisor | None = None
        self._wake = threading.Event()
        self._stop_requested = False
        self._gc_freeze = gc_freeze
        self._frozen = False

    @property
    def root(self) -> Supervisor:
        """The running root supervisor."""
        if self._root is None:
            msg = "the node has not been started"
            raise RuntimeError(msg)
        return self._root

    def start(self) -> Supervisor:
        """Start the root supervisor and its tree (then freeze the heap, if asked to)."""
        self._root = Supervisor.start(self._root_spec, self.runtime)
        self._root.link(self._on_root_exit)
        if self._gc_freeze and not self._frozen:
            # What the start made lives as long as the node: full collections
            # need not walk it again (they were the HTTP edge's p99).
            gc.freeze()
            self._frozen = True
        return self._root

    def _on_root_exit(self, reason: ExitReason) -> None:
        if not self._stop_requested:
            logger.error("root supervisor exited: %s", reason)
        self._wake.set()

    def stop(self) -> None:
        """Ask `run()` to shut the tree down and return."""
        self._stop_requested = True
        self._wake.set()

    def run(
        self,
        *,
        handle_signals: bool = True,
        on_ready: Callable[[Supervisor], None] | None = None,
    ) -> int:
        """Start (if needed), wait for a stop or a root failure, shut down.

        Signal handlers (main thread only) are installed before the tree
        starts, so a SIGTERM that arrives during start-up still shuts down
        cleanly.

        Args:
            handle_signals: Install SIGTERM/SIGINT handlers that call `stop()`.
            on_ready: Called with the root supervisor once the tree is up.

        Returns:
            The process exit status: 0 after a requested stop, 1 if the root failed.
        """
        previous = self._install_signal_handlers() if handle_signals else {}
        try:
            root = self._root or self.start()
            if on_ready is not None:
                on_ready(root)
            self._wake.wait()
            failed = root.exit_reason is not None and not self._stop_requested
            root.shutdown()
            self.runtime.close()
            if self._frozen:
                gc.unfreeze()  # what the tree held may now be collected
                self._frozen = False
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if failed or root.exit_reason == ExitReason(ExitKind.KILLED):
            return EXIT_ROOT_FAILED
        return EXIT_OK

    def _install_signal_handlers(self) -> dict[int, signal.Handlers | int | None]:
        def on_signal(signum: int, _frame: FrameType | None) -> None:
            logger.info("received %s; stopping", signal.Signals(signum).name)
            self.stop()

        previous = {}
        for signum in _STOP_SIGNALS:
            previous[signum] = signal.getsignal(signum)
            signal.signal(signum, on_signal)
        return previous  # type: ignore[return-value]
