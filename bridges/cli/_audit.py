"""`actorfleet audit`: the audit log, unsealed where the data keys remain (as the NATS admin)."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import msgspec

from actors import state_key, unseal
from bridges._loop import run_async
from bridges.nats._auth import ADMIN_USER
from bridges.nats._embedded import with_embedded_credentials
from bridges.stores import AsyncStore, KvStore, RedisStore
from bridges.stores._audit import JetStreamAudit
from messages import GenerationAudited, UserDataErased

if TYPE_CHECKING:
    from config import Settings


def audit(args: argparse.Namespace, settings: Settings) -> int:
    """Print the last records of the audit log as JSON lines, unsealed where possible."""
    state = settings.state
    if not state.audit_stream:
        print("actorfleet audit: [state] audit_stream is empty: no audit log", file=sys.stderr)
        return 2
    return run_async(_print_audit(settings, args.last))


async def _print_audit(settings: Settings, last: int) -> int:
    url = settings.nats.url
    # Reading the log and the keys by id is the admin's (the embedded server's, on this host).
    nats = with_embedded_credentials(settings.nats, ADMIN_USER)
    log = await JetStreamAudit.open(
        url, settings.state, nats, name="actorfleet-audit", create=False
    )
    store: AsyncStore | None = None
    try:
        if settings.state.backend == "kv":
            store = await KvStore.open(url, settings.state, nats, name="actorfleet-audit")
        elif settings.state.backend == "redis":
            store = await RedisStore.open(settings.state)
        async for record in log.records(last=max(last, 0)):
            print(json.dumps(await _readable(record, store)), flush=True)
    finally:
        await log.close()
        if store is not None:
            await store.close()
    return 0


async def _readable(
    record: GenerationAudited | UserDataErased, store: AsyncStore | None
) -> dict[str, Any]:
    shown: dict[str, Any] = msgspec.to_builtins(record)
    if isinstance(record, GenerationAudited):
        shown.pop("sealed")
        secret = (
            None if store is None else await store.get(state_key("auditkey", "id", record.key_id))
        )
        opened = None if secret is None else unseal(secret, record.sealed, key_id=record.key_id)
        if opened is None:
            shown["exchange"] = "sealed; its key was destroyed (erased) or is not in this store"
        else:
            shown["exchange"] = {"prompt": opened.prompt, "response": opened.response}
    return shown
