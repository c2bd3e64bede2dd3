"""CPU affinity for a node: keep its GIL-bound threads on the CPUs it is given.

Handing a request from one Python thread to another costs a futex wake-up;
across CPUs that wake-up needs an inter-processor interrupt, which under a
hypervisor is several times dearer (on this project's 2-core VMs a thread
ping-pong takes ~45 us across CPUs and ~12 us on one; see
docs/benchmarks.md). Only one thread runs Python at a time anyway, so a node
loses little by staying on one CPU; run one node per CPU to use the rest.

OS-process children are not bound by the node's pinning: they get back the
CPU set the process started with.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Final

from messages import ConfigError

_STARTUP_CPUS: Final = frozenset(os.sched_getaffinity(0))


def pin_cpus(cpus: Iterable[int]) -> frozenset[int]:
    """Bind the calling thread, and every thread and process it starts, to `cpus`.

    Call it before the node starts its threads.

    Raises:
        ConfigError: If a CPU is not available to this process.
    """
    wanted = frozenset(cpus)
    if not wanted <= _STARTUP_CPUS:
        raise ConfigError(
            "node.cpus", f"CPUs {sorted(wanted - _STARTUP_CPUS)} are not in {sorted(_STARTUP_CPUS)}"
        )
    os.sched_setaffinity(0, wanted)
    return wanted


def unpin_process(pid: int) -> None:
    """Give a child process back the CPU set this process started with."""
    if frozenset(os.sched_getaffinity(0)) != _STARTUP_CPUS:
        os.sched_setaffinity(pid, _STARTUP_CPUS)
