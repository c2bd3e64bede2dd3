"""Supervisors with Erlang/OTP semantics: strategies, restart types, intensity, backoff."""

from supervisors._affinity import pin_cpus, unpin_process
from supervisors._node import EXIT_OK, EXIT_ROOT_FAILED, Node
from supervisors._process import ProcessChild, exit_reason_for, process_child
from supervisors._spec import (
    Backoff,
    ChildHandle,
    ChildKind,
    ChildSpec,
    Restart,
    Strategy,
    SupervisorSpec,
    agent_child,
)
from supervisors._stats import (
    ChildStatistics,
    ChildStatus,
    IntensityWindow,
    SupervisorStatistics,
)
from supervisors._supervisor import Supervisor, supervisor_child

__all__ = [
    "EXIT_OK",
    "EXIT_ROOT_FAILED",
    "Backoff",
    "ChildHandle",
    "ChildKind",
    "ChildSpec",
    "ChildStatistics",
    "ChildStatus",
    "IntensityWindow",
    "Node",
    "ProcessChild",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorSpec",
    "SupervisorStatistics",
    "agent_child",
    "exit_reason_for",
    "pin_cpus",
    "process_child",
    "supervisor_child",
    "unpin_process",
]
