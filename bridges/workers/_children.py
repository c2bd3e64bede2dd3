"""Model worker processes as supervised children, and the pool's backends that reach them."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from bridges.nats._wire import Subjects
from bridges.workers._remote import RemoteBackend
from messages import ExitKind
from supervisors import ChildHandle, ChildKind, ChildSpec, ProcessChild, Restart

if TYPE_CHECKING:
    from nats.aio.client import Client

    from actors import ExitReason
    from config import TierSettings
    from inference import Backend


def model_worker_child(
    tier: str,
    index: int,
    argv: list[str],
    *,
    env: Mapping[str, str] | None,
    shutdown: float,
    on_failure: Callable[[str], None],
) -> ChildSpec:
    """A child spec that runs one model worker process of `tier`.

    When the process dies other than by a requested stop, `on_failure(tier)`
    is called (on the thread that noticed), so the pool can count it
    against the tier's breaker: a tier whose workers keep dying is taken
    out and probed back in once they stay up.
    """
    name = f"worker.{tier}.{index}"

    def exited(reason: ExitReason) -> None:
        if reason.kind not in {ExitKind.NORMAL, ExitKind.SHUTDOWN}:
            on_failure(tier)

    def start() -> ChildHandle:
        child = ProcessChild(argv, name=name, env=env)
        child.link(exited)
        return child

    return ChildSpec(
        id=name, start=start, restart=Restart.PERMANENT, shutdown=shutdown, kind=ChildKind.PROCESS
    )


def worker_argv(tier: str, settings_json: str, url: str) -> list[str]:
    """The command line of one model worker process."""
    return [
        sys.executable,
        "-m",
        "bridges",
        "worker",
        "--tier",
        tier,
        "--settings-json",
        settings_json,
        "--nats",
        url,
    ]


def remote_backends(
    connection: Callable[[], Client], prefix: str
) -> Callable[[TierSettings], Backend]:
    """Makes the backend of a worker reached over `connection()` (this node's NATS).

    Until a worker answers, its model, capacity and context length are
    assumed from the tier's `[backend]` settings.
    """
    subjects = Subjects(prefix)

    def make(tier: TierSettings) -> Backend:
        return RemoteBackend(
            connection,
            subjects.inference(tier.name),
            model=tier.backend.model,
            capacity=tier.backend.capacity,
            context_length=tier.backend.context_length,
            heartbeat=tier.heartbeat,
        )

    return make
