"""The `actorfleet` command and its client subcommands."""

from bridges.cli._main import main

__all__ = ["main"]
