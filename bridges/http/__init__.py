"""The HTTP edge: agent and generation routes, schema, problems, health and metrics."""

from bridges.http._bridge import HOP_MARGIN, SHUTDOWN_GRACE, HttpBridge
from bridges.http._health import TREE_TIMEOUT, Health
from bridges.http._host import Edge
from bridges.http._metrics import Metrics, Snapshot, meter_from_settings

__all__ = [
    "HOP_MARGIN",
    "SHUTDOWN_GRACE",
    "TREE_TIMEOUT",
    "Edge",
    "Health",
    "HttpBridge",
    "Metrics",
    "Snapshot",
    "meter_from_settings",
]
