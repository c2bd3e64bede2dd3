"""Node assembly: the supervision tree of a node, its held resources, its typed services."""

from bridges.node._build import build_node, build_runtime, import_agent
from bridges.node._holder import ResourceAgent, resource_child
from bridges.node._services import NodeServices

__all__ = [
    "NodeServices",
    "ResourceAgent",
    "build_node",
    "build_runtime",
    "import_agent",
    "resource_child",
]
