"""What a stream found on the server must not do, before a node trusts it.

A node creates the streams it uses when they are missing. One that exists
already may have been made by anyone who holds a node credential, before
the node first started (or before an upgrade added a stream), with
settings that leak or drop what the node writes: a republish or a source
copying it elsewhere, limits or a discard policy that drop audit records,
roll-up headers that let one publish wipe a bucket. `hazards` names them;
the node refuses such a stream, which an admin must recreate.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nats.js.api import DiscardPolicy

if TYPE_CHECKING:
    from nats.js.api import StreamConfig

_UNLIMITED = (None, -1, 0)


def hazards(found: StreamConfig, *, records: bool = False) -> list[str]:
    """What in `found` would leak what is written to it, or (for `records`) drop it.

    `records` is for a stream that must keep every message (the audit log).
    """
    leaks = (
        (found.republish is not None, "republishes what it stores"),
        (found.mirror is not None, "mirrors another stream"),
        (bool(found.sources), "sources other streams"),
        (getattr(found, "subject_transform", None) is not None, "transforms its subjects"),
    )
    seen = [what for present, what in leaks if present]
    if records:
        seen += _drops(found)
    return seen


def _drops(found: StreamConfig) -> list[str]:
    """What in `found` would drop or remove records."""
    limits = ("max_msgs", "max_bytes", "max_age", "max_msgs_per_subject")
    drops = [
        f"has {n} = {getattr(found, n)}" for n in limits if getattr(found, n) not in _UNLIMITED
    ]
    if not (found.deny_delete and found.deny_purge):
        drops.append("allows delete or purge")
    if found.allow_rollup_hdrs:
        drops.append("takes roll-up headers")
    if found.discard == DiscardPolicy.NEW and drops:
        drops.append("discards new messages")
    return drops
