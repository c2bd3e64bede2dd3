"""Edges of a node: assembly from settings and the command line (NATS and HTTP to come)."""

from bridges._app import build_node, build_runtime, import_agent
from bridges._cli import main

__all__ = ["build_node", "build_runtime", "import_agent", "main"]
