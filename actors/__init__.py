"""Agents: pykka actors with typed handlers, deadlines and a context."""

from actors._admission import Admission, AdmissionStatistics
from actors._agent import Agent, handler
from actors._audit import DataKeys, ErasureFence, begin_erasure, end_erasure, seal, unseal
from actors._builtin import PingAgent
from actors._call import AgentDefaults, Call, make_metadata
from actors._context import Context
from actors._directory import Directory
from actors._lifecycle import ExitLink, ExitListener, ExitReason
from actors._ports import AuditLog, GenerationStream, Inference, StateStore, Transport
from actors._ref import AgentRef, LocalAgentRef, TypeRef
from actors._reply import Reply
from actors._runtime import EventBus, Runtime
from actors._sealed import SealedValue, open_value, seal_value
from actors._state import MAX_KEY_LENGTH, MemoryStore, check_key, state_key
from actors._timers import TimerHandle, Timers
from actors._tools import Tool, ToolCall, tool
from actors._tracing import Tracing, tracing_from_settings, within

__all__ = [
    "MAX_KEY_LENGTH",
    "Admission",
    "AdmissionStatistics",
    "Agent",
    "AgentDefaults",
    "AgentRef",
    "AuditLog",
    "Call",
    "Context",
    "DataKeys",
    "Directory",
    "ErasureFence",
    "EventBus",
    "ExitLink",
    "ExitListener",
    "ExitReason",
    "GenerationStream",
    "Inference",
    "LocalAgentRef",
    "MemoryStore",
    "PingAgent",
    "Reply",
    "Runtime",
    "SealedValue",
    "StateStore",
    "TimerHandle",
    "Timers",
    "Tool",
    "ToolCall",
    "Tracing",
    "Transport",
    "TypeRef",
    "begin_erasure",
    "check_key",
    "end_erasure",
    "handler",
    "make_metadata",
    "open_value",
    "seal",
    "seal_value",
    "state_key",
    "tool",
    "tracing_from_settings",
    "unseal",
    "within",
]
