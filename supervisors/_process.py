"""OS-process children: started, awaited and killed like any other child."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections.abc import Mapping, Sequence
from typing import IO, Final

from actors import ExitLink, ExitListener, ExitReason
from messages import ExitKind
from supervisors._affinity import unpin_process
from supervisors._shutdown import wait_bound
from supervisors._spec import DEFAULT_SHUTDOWN, ChildHandle, ChildKind, ChildSpec, Restart

logger: Final = logging.getLogger("actorfleet.process")


def exit_reason_for(returncode: int) -> ExitReason:
    """Translate a process exit status into an exit reason."""
    if returncode == 0:
        return ExitReason(ExitKind.NORMAL)
    if returncode == -signal.SIGKILL:
        return ExitReason(ExitKind.KILLED, "SIGKILL")
    if returncode < 0:
        return ExitReason(ExitKind.CRASHED, signal.Signals(-returncode).name)
    return ExitReason(ExitKind.CRASHED, f"exit code {returncode}")


class ProcessChild:
    """A running OS process under supervision.

    A waiter thread blocks in `wait()` and reports the exit the moment the
    process ends, so death is noticed by an event, not by polling.
    """

    def __init__(
        self,
        argv: Sequence[str],
        *,
        name: str,
        env: Mapping[str, str] | None = None,
        stdout: int | None = None,
    ) -> None:
        self.name = name
        self.exit_link = ExitLink()
        self._stopping = False
        self._popen = subprocess.Popen(  # noqa: S603 - argv comes from the child spec
            list(argv),
            env=None if env is None else {**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            start_new_session=True,
        )
        unpin_process(self._popen.pid)
        self._waiter = threading.Thread(
            target=self._wait, name=f"actorfleet-wait-{name}", daemon=True
        )
        self._waiter.start()

    @property
    def pid(self) -> int:
        """The OS process id."""
        return self._popen.pid

    @property
    def stdout(self) -> IO[bytes] | None:
        """The process's standard output, when it was started with `stdout=PIPE`."""
        return self._popen.stdout

    @property
    def alive(self) -> bool:
        """Whether the process has not exited yet."""
        return not self.exit_link.exited

    def _wait(self) -> None:
        returncode = self._popen.wait()
        reason = exit_reason_for(returncode)
        if self._stopping and returncode == -signal.SIGTERM:
            reason = ExitReason(ExitKind.SHUTDOWN)
        if self._popen.stdout is not None:
            self._popen.stdout.close()
        self.exit_link.exit(reason)

    def link(self, listener: ExitListener) -> None:
        """Call `listener(reason)` when the process exits."""
        self.exit_link.link(listener)

    def shutdown(self, *, timeout: float) -> None:
        """SIGTERM, wait up to `timeout` seconds (`math.inf`: no bound), then SIGKILL."""
        self._stopping = True
        self._signal(signal.SIGTERM)
        if not self.exit_link.wait(timeout=wait_bound(timeout)):
            self.kill()
            self.exit_link.wait(timeout=timeout or None)

    def kill(self) -> None:
        """SIGKILL the process."""
        self._signal(signal.SIGKILL)

    def _signal(self, signum: signal.Signals) -> None:
        if self.alive:
            try:
                self._popen.send_signal(signum)
            except ProcessLookupError:
                logger.debug("process %s already gone", self.name)

    def __repr__(self) -> str:
        return f"<ProcessChild {self.name} pid={self.pid}>"


def process_child(
    id: str,  # noqa: A002 - OTP's name for it
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    restart: Restart = Restart.PERMANENT,
    shutdown: float = DEFAULT_SHUTDOWN,
) -> ChildSpec:
    """A child spec that runs `argv` as an OS process."""

    def start() -> ChildHandle:
        return ProcessChild(argv, name=id, env=env)

    return ChildSpec(id=id, start=start, restart=restart, shutdown=shutdown, kind=ChildKind.PROCESS)
