"""State stores and the audit stream, on the node's I/O loop."""

from bridges.stores._audit import JetStreamAudit, LoopAudit
from bridges.stores._kv import KvStore
from bridges.stores._loop_store import LoopStore, run_or_unavailable
from bridges.stores._redis import RedisStore
from bridges.stores._registry import STORES, AsyncStore, Where, is_networked, open_store

__all__ = [
    "STORES",
    "AsyncStore",
    "JetStreamAudit",
    "KvStore",
    "LoopAudit",
    "LoopStore",
    "RedisStore",
    "Where",
    "is_networked",
    "open_store",
    "run_or_unavailable",
]
