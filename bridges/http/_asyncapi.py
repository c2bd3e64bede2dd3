"""`GET /asyncapi.json`: the node's NATS subjects as an AsyncAPI 3.0 document.

The document is built once per app, at its first request, from what the
running node has: the NATS bridge's URL, settings, subjects and agents,
the event settings, the pool's tiers; payload schemas come from the same
msgspec types as the OpenAPI document (`bridges.http._asyncapi_messages`),
channels and operations from the bridge's own subject functions
(`bridges.http._asyncapi_channels`). No secret reaches it: servers show
host and port only, security schemes only the kind of credential.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata as distribution
from typing import TYPE_CHECKING, Any, Final, Protocol
from urllib.parse import urlsplit

import msgspec
from litestar import get
from litestar.response import Response

from bridges.http._asyncapi_channels import NatsApi, NatsFacts
from bridges.http._asyncapi_messages import MSGPACK
from bridges.nats._bridge import NatsBridge
from bridges.nats._serving import request_types
from messages import Unavailable

if TYPE_CHECKING:
    from actors import Agent, Runtime
    from bridges._seam import PoolClient
    from bridges.http._health import Health
    from bridges.http._host import Guard
    from config import NatsSettings

ASYNCAPI_PATH: Final = "/asyncapi.json"
ASYNCAPI_VERSION: Final = "3.0.0"
MEDIA_TYPE: Final = f"application/vnd.aai.asyncapi+json;version={ASYNCAPI_VERSION}"
_NATS_PORT: Final = 4222
_UNKNOWN_VERSION: Final = "0.0.0"
_DESCRIPTION: Final = (
    "The NATS subjects this node serves and publishes. Bodies are MessagePack; each"
    " payload schema is the JSON Schema of the msgspec type that the node encodes (a"
    " Struct is a map keyed by field name, tagged by its `type` field), so a value the"
    " schema takes, written as MessagePack, is one the node reads. Channels without an"
    " address are reply subjects: the inbox a request names."
)
_NO_NATS: Final = "This node does not connect to NATS (`nats.enabled = false`): it has no subjects."


class DocumentHost(Protocol):
    """What the route needs of the HTTP bridge."""

    @property
    def runtime(self) -> Runtime:
        """The node's runtime (its transport is the NATS bridge while connected)."""
        ...

    @property
    def agents(self) -> Sequence[type[Agent]]:
        """The agent classes the HTTP edge exposes."""
        ...

    @property
    def health(self) -> Health:
        """What the node is configured to need (NATS, an inference pool)."""
        ...

    def guards(self) -> list[Guard]:
        """The checks every API route runs first (authentication)."""
        ...

    def pool(self) -> PoolClient:
        """The inference pool running now (raises `Unavailable`)."""
        ...


def asyncapi_routes(bridge: DocumentHost) -> list[Any]:
    """`GET /asyncapi.json`, guarded as the agent routes are, its document built once."""
    built: list[bytes] = []

    @get(
        ASYNCAPI_PATH,
        name="asyncapi",
        include_in_schema=False,
        guards=bridge.guards(),
        media_type=MEDIA_TYPE,
    )
    async def asyncapi() -> Response[bytes]:
        if not built:
            document = asyncapi_document(facts_of(bridge), node=bridge.runtime.node)
            built.append(msgspec.json.encode(document))
        return Response(built[0], media_type=MEDIA_TYPE)

    return [asyncapi]


def facts_of(bridge: DocumentHost) -> NatsFacts | None:
    """What the node does on NATS now; None if it does not use NATS.

    Raises:
        Unavailable: The NATS bridge is not connected, or the pool not
            running, yet: the document would miss what they add.
    """
    health = bridge.health
    if not health.needs_nats:
        return None
    nats = bridge.runtime.transport
    if not isinstance(nats, NatsBridge):
        msg = "the NATS bridge is not connected yet: its subjects are not known"
        raise Unavailable(msg, retry_after=1.0)
    tiers = bridge.pool().pool.tier_names if health.needs_inference else []
    served = {a.agent_type for a in nats.agents}
    return NatsFacts(
        url=nats.url,
        nats=nats.settings,
        subjects=nats.subjects,
        events=nats.events.settings,
        served=nats.agents,
        asked=[a for a in bridge.agents if request_types(a) and a.agent_type not in served],
        tiers=tiers,
    )


def asyncapi_document(facts: NatsFacts | None, *, node: str) -> dict[str, Any]:
    """The AsyncAPI 3.0 document of a node (`facts` None: one without NATS)."""
    info = {"title": f"actorfleet node {node}", "version": _version(), "description": _DESCRIPTION}
    if facts is None:
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": {**info, "description": _NO_NATS},
            "channels": {},
            "operations": {},
        }
    api = NatsApi(facts)
    schemes = security_schemes(facts.url, facts.nats)
    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": info,
        "servers": servers(facts.url, facts.nats, list(schemes)),
        "defaultContentType": MSGPACK,
        "channels": api.channels,
        "operations": api.operations,
        "components": {
            "schemas": api.schemas.components,
            "messages": api.messages,
            "securitySchemes": schemes,
        },
    }


def servers(url: str, nats: NatsSettings, schemes: Sequence[str]) -> dict[str, Any]:
    """One server per URL: host and port only (never what the URL holds besides)."""
    urls = _urls(url)
    tls = any(_tls_settings(nats)) or any(u.startswith("tls://") for u in urls)
    found: dict[str, Any] = {}
    for index, one in enumerate(urls):
        parts = urlsplit(one)
        host = parts.hostname or ""
        shown = f"[{host}]" if ":" in host else host
        server: dict[str, Any] = {
            "host": f"{shown}:{parts.port or _NATS_PORT}",
            "protocol": "nats",
            "description": "Over TLS." if tls else "nats://: TLS only if the server asks for it.",
        }
        if schemes:
            server["security"] = [{"$ref": f"#/components/securitySchemes/{s}"} for s in schemes]
        found["nats" if len(urls) == 1 else f"nats-{index}"] = server
    return found


def security_schemes(url: str, nats: NatsSettings) -> dict[str, Any]:
    """The kind of credential the node connects with (no user name, file or secret)."""
    in_url = [urlsplit(u) for u in _urls(url)]
    found: dict[str, Any] = {}
    if nats.user or any(p.password for p in in_url):
        found["userPassword"] = {"type": "userPassword", "description": "A user and password."}
    if nats.token_env or any(p.username and not p.password for p in in_url):
        found["token"] = {
            "type": "apiKey",
            "in": "password",
            "description": "A token (CONNECT's auth_token).",
        }
    if nats.nkey_seed_file:
        found["nkey"] = {
            "type": "asymmetricEncryption",
            "description": "An NKey: the client signs the server's nonce; no secret is sent.",
        }
    if nats.creds_file:
        found["creds"] = {
            "type": "asymmetricEncryption",
            "description": "A user JWT and its NKey (a .creds file, operator mode).",
        }
    if nats.tls_cert_file:
        found["mutualTls"] = {"type": "X509", "description": "A client certificate (mutual TLS)."}
    return found


def _urls(url: str) -> list[str]:
    return [u.strip() if "://" in u else f"nats://{u.strip()}" for u in url.split(",") if u.strip()]


def _tls_settings(nats: NatsSettings) -> tuple[str, ...]:
    return (nats.tls_ca_file, nats.tls_cert_file, nats.tls_key_file, nats.tls_hostname)


def _version() -> str:
    try:
        return distribution.version("actorfleet")
    except distribution.PackageNotFoundError:
        return _UNKNOWN_VERSION
