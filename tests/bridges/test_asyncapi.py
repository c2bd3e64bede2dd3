"""`/asyncapi.json`: valid AsyncAPI 3.0, true to what the bridge subscribes to and sends.

The AsyncAPI 3.0.0 JSON Schema is shipped beside this file
(`asyncapi-3.0.0.schema.json`, see `asyncapi-3.0.0.schema.md`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import pytest
from jsonschema import Draft7Validator
from litestar.testing import TestClient
from nats.aio.client import Client

import config
from actors import Agent, PingAgent, Runtime
from actors.support import Intent, SupportAgent, SupportStep, TicketCreated
from bridges import NatsServer, build_node, free_port
from bridges._held import Held, Resources
from bridges.http._asyncapi import asyncapi_document
from bridges.http._asyncapi_channels import NatsFacts
from bridges.http._asyncapi_messages import EnvelopeMetadata
from bridges.http._bridge import HttpBridge
from bridges.http._health import Health
from bridges.http._metrics import Metrics
from bridges.http._schema import reply_types
from bridges.nats import NatsBridge, Subjects
from bridges.nats._auth import ADMIN_USER, NODE_USER, connect_options
from bridges.nats._serving import request_types
from bridges.nats._wire import (
    EnvelopeDecoder,
    encode_chunk_frame,
    encode_error,
    encode_error_envelope,
    encode_reply,
    encode_reply_envelope,
    encode_request,
    event_headers,
    metadata_headers,
)
from bridges.node._build import import_agent
from bridges.workers import ModelWorker, RemoteBackend, remote_backends, worker_pool
from messages import (
    CancelGeneration,
    FinishReason,
    GenerateRequest,
    GenerateResult,
    GenerationAlive,
    GenerationStarted,
    Metadata,
    Overloaded,
    Ping,
    Pong,
    Principal,
    Priority,
    Scope,
    TokenChunk,
    Usage,
    WorkerReady,
    encode,
)
from supervisors import Node
from tests.conftest import WAIT

SCHEMA = Path(__file__).with_name("asyncapi-3.0.0.schema.json")
ASYNCAPI = Draft7Validator(json.loads(SCHEMA.read_text()))
META = Metadata(
    id="m-1",
    deadline=1_900_000_000.5,
    correlation_id="c-1",
    priority=Priority.CRITICAL,
    sender="support/0",
    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    tracestate="af=1",
    principal=Principal(name="web", scope=Scope.SERVICE, user="jane"),
)


def default_settings() -> config.Settings:
    return config.load(env={})


def default_agents(settings: config.Settings) -> list[type[Agent]]:
    return [import_agent(p.agent, key="pools") for p in settings.pools]


def facts(settings: config.Settings, **changes: Any) -> NatsFacts:
    found = NatsFacts(
        url=settings.nats.url,
        nats=settings.nats,
        subjects=Subjects(settings.nats.prefix),
        events=settings.events,
        served=default_agents(settings),
        tiers=[t.name for t in settings.inference.tiers],
    )
    return dataclasses.replace(found, **changes)


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    return asyncapi_document(facts(default_settings()), node="doc")


def asyncapi_errors(doc: dict[str, Any]) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message[:200]}" for e in ASYNCAPI.iter_errors(doc)]


def conforms(doc: dict[str, Any], pointer: str, value: Any) -> list[str]:
    """What is wrong with `value` as the document's schema at `pointer` says (its refs resolved)."""
    validator = Draft7Validator({**doc, "$ref": pointer})
    return [e.message[:200] for e in validator.iter_errors(value)]


def resolve(doc: dict[str, Any], ref: str) -> Any:
    """What `ref` points at, through references to references."""
    target: Any = doc
    for part in ref.removeprefix("#/").split("/"):
        target = target[part.replace("~1", "/").replace("~0", "~")]
    return resolve(doc, target["$ref"]) if isinstance(target, dict) and "$ref" in target else target


def refs(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        if isinstance(value.get("$ref"), str):
            yield value["$ref"]
        for item in value.values():
            yield from refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from refs(item)


def decoded(body: bytes) -> Any:
    return msgspec.msgpack.decode(body)


@pytest.mark.slow
def test_the_default_configurations_document_is_valid_asyncapi_3(document: dict[str, Any]) -> None:
    assert document["asyncapi"] == "3.0.0"
    assert asyncapi_errors(document) == []


@pytest.mark.slow
def test_the_schema_check_catches_a_document_that_breaks_it(document: dict[str, Any]) -> None:
    broken = json.loads(json.dumps(document))
    broken["operations"]["serve.ping"]["action"] = "publish"  # AsyncAPI 2's word
    broken["channels"]["agent.ping"]["messages"]["Ping"]["payload"]["discriminator"] = {"x": 1}
    assert len(asyncapi_errors(broken)) >= 2


def test_every_reference_in_the_document_points_at_something_in_it(
    document: dict[str, Any],
) -> None:
    found = set(refs(document))
    assert "#/components/schemas/Principal" in found
    for ref in found:
        assert ref.startswith("#/"), ref
        resolve(document, ref)  # raises KeyError if it points at nothing


def test_each_agent_types_subject_is_a_channel_whose_messages_are_exactly_its_request_types(
    document: dict[str, Any],
) -> None:
    subjects = Subjects("af")
    served = [a for a in default_agents(default_settings()) if request_types(a)]
    assert {a.agent_type for a in served} >= {"support", "pricing", "ping"}
    for agent_class in served:
        agent_type = agent_class.agent_type
        channel = document["channels"][f"agent.{agent_type}"]
        assert channel["address"] == subjects.agent(agent_type)
        schemas = [m["payload"]["oneOf"][1]["$ref"] for m in channel["messages"].values()]
        assert schemas == [f"#/components/schemas/{t.__name__}" for t in request_types(agent_class)]
        serve = document["operations"][f"serve.{agent_type}"]
        assert serve["action"] == "receive"
        assert serve["bindings"]["nats"]["queue"] == agent_type
        named = [resolve(document, m["$ref"])["name"] for m in serve["messages"]]
        assert named == [t.__struct_config__.tag for t in request_types(agent_class)]


def test_each_reply_channel_holds_the_handlers_reply_types_and_the_typed_error(
    document: dict[str, Any],
) -> None:
    for agent_class in default_agents(default_settings()):
        accepted = request_types(agent_class)
        reply = document["operations"][f"serve.{agent_class.agent_type}"]["reply"]
        named = [resolve(document, m["$ref"]) for m in reply["messages"]]
        titles = [m["title"] for m in named]
        expected = [t.__name__ for t in reply_types(agent_class, accepted)] + ["ErrorReply"]
        if agent_class.chunk_type is not None:
            expected.append(agent_class.chunk_type.__name__)
        assert titles == expected
        assert resolve(document, reply["channel"]["$ref"])["address"] is None


def test_the_envelope_documented_is_the_one_the_bridge_decodes() -> None:
    for message_type in (Ping, GenerateRequest):
        bridge_reads = EnvelopeDecoder(message_type)._second.type
        assert typing.get_args(bridge_reads) == (*typing.get_args(EnvelopeMetadata), message_type)


def test_what_the_bridge_encodes_for_agents_fits_the_documented_messages(
    document: dict[str, Any],
) -> None:
    ping, pong = "#/channels/agent.ping/messages/Ping", "#/channels/agent.ping.reply/messages/Pong"
    body, headers = encode_reply(Pong(payload="hi", responder="ping/0"))
    error_body, error_headers = encode_error(Overloaded("full", retry_after=1.0))
    cases = [
        (f"{ping}/payload", decoded(encode_request(Ping(payload="hi"), META))),
        (f"{ping}/payload", decoded(encode(Ping(payload="hi")))),
        (f"{ping}/headers", metadata_headers(META)),
        (f"{pong}/payload", decoded(encode_reply_envelope(Pong(payload="hi")))),
        (f"{pong}/payload", decoded(body)),
        (f"{pong}/headers", headers),
        (
            "#/components/messages/ErrorReply/payload",
            decoded(encode_error_envelope(Overloaded("x"))),
        ),
        ("#/components/messages/ErrorReply/payload", decoded(error_body)),
        ("#/components/messages/ErrorReply/headers", error_headers),
        (
            "#/channels/agent.support.reply/messages/chunk/payload",
            decoded(encode_chunk_frame(SupportStep(step="decided", detail="billing"))),
        ),
    ]
    for pointer, value in cases:
        assert conforms(document, pointer, value) == [], pointer
    wrong = decoded(encode_request(Ping(payload="hi"), META))
    wrong[0] = 3
    assert conforms(document, f"{ping}/payload", wrong) != []
    assert conforms(document, f"{ping}/payload", {"payload": "no tag"}) != []


def test_what_the_bridge_and_workers_encode_for_events_and_generations_fits_the_document(
    document: dict[str, Any],
) -> None:
    ticket = TicketCreated(ticket_id="t-1", intent=Intent.BILLING, conversation_id="c-1")
    started = GenerationStarted(
        worker="1-ab",
        control="af.inf.large.ctl.1-ab",
        backend="scripted",
        model="m",
        capacity=1,
        context_length=10,
        heartbeat=0.5,
    )
    usage = Usage(prompt_tokens=1, completion_tokens=1)
    result = GenerateResult(
        text="a", finish_reason=FinishReason.STOP, usage=usage, tier="large", model="m", backend="b"
    )
    frames = "#/channels/inference.frames/messages"
    ready = WorkerReady(worker="1-ab", tier="large", backend="b", model="m", capacity=1)
    cases = [
        ("#/channels/event.TicketCreated/messages/TicketCreated/payload", decoded(encode(ticket))),
        ("#/components/schemas/NatsEventHeaders", event_headers(META)),
        (
            "#/channels/inference.generate/messages/GenerateRequest/payload",
            decoded(encode_request(GenerateRequest(prompt="hi"), META)),
        ),
        (f"{frames}/GenerationStarted/payload", decoded(encode_reply_envelope(started))),
        (
            f"{frames}/TokenChunk/payload",
            decoded(encode_reply_envelope(TokenChunk(index=0, text="a"))),
        ),
        (f"{frames}/GenerationAlive/payload", decoded(encode_reply_envelope(GenerationAlive()))),
        (f"{frames}/GenerateResult/payload", decoded(encode_reply_envelope(result))),
        (f"{frames}/ErrorReply/payload", decoded(encode_error_envelope(Overloaded("x")))),
        (
            "#/channels/inference.control/messages/CancelGeneration/payload",
            decoded(encode(CancelGeneration(id="m-1"))),
        ),
        ("#/channels/inference.ready/messages/WorkerReady/payload", decoded(encode(ready))),
    ]
    for pointer, value in cases:
        assert conforms(document, pointer, value) == [], pointer


def _expanded(address: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], address)


def test_the_inference_subjects_are_the_ones_workers_and_the_pool_use(
    document: dict[str, Any],
) -> None:
    settings = default_settings()
    tier = settings.inference.tiers[0]
    pool, backend = worker_pool(tier)
    worker = ModelWorker(pool, backend, tier=tier.name, subjects=Subjects("af"), heartbeat=0.5)
    remote = remote_backends(lambda: None, "af")(tier)  # type: ignore[arg-type, return-value]
    assert isinstance(remote, RemoteBackend)
    channels = document["channels"]
    values = {"tier": tier.name, "worker": worker.id}
    assert channels["inference.generate"]["parameters"]["tier"]["enum"] == ["large", "small"]
    assert _expanded(channels["inference.generate"]["address"], values) == worker.subject
    assert _expanded(channels["inference.generate"]["address"], values) == remote.subject
    assert _expanded(channels["inference.ready"]["address"], values) == worker.ready_subject
    assert _expanded(channels["inference.control"]["address"], values) == worker.control


def test_each_durable_consumer_is_a_receive_operation_and_its_failures_go_to_dead_letters(
    document: dict[str, Any],
) -> None:
    consume = document["operations"]["consume.shipping_OrderCreated"]
    assert consume["action"] == "receive"
    assert consume["x-jetstream"]["durable"] == "shipping_OrderCreated"
    assert consume["x-jetstream"]["stream"] == "AF_EVENTS"
    assert resolve(document, consume["channel"]["$ref"])["address"] == "af.evt.OrderCreated"
    dead = document["operations"]["deadLetter.OrderCreated"]
    assert (dead["action"], dead["channel"]) == (
        "send",
        {"$ref": "#/channels/deadLetter.OrderCreated"},
    )
    assert document["channels"]["deadLetter.OrderCreated"]["address"] == "af.dlq.OrderCreated"


def test_the_events_the_agents_modules_name_are_what_the_node_publishes(
    document: dict[str, Any],
) -> None:
    published = {k for k in document["operations"] if k.startswith("publish.")}
    # What the support agents' modules name, and so can publish.
    events = ("TicketCreated", "KBLookupPerformed", "OrderCreated", "InvoiceValidated")
    assert published == {f"publish.{e}" for e in (*events, "ShipmentPlanned")}


def test_a_gateway_asks_the_types_it_does_not_serve_and_serves_none_of_them() -> None:
    settings = default_settings()
    doc = asyncapi_document(facts(settings, served=[PingAgent], asked=[SupportAgent]), node="gw")
    assert doc["operations"]["ask.support"]["action"] == "send"
    assert "serve.support" not in doc["operations"]
    assert doc["channels"]["discovery.ping.service"]["parameters"]["service"]["enum"] == ["ping"]
    assert asyncapi_errors({**doc, "channels": {}, "components": {}}) == []


def test_no_credential_of_the_nats_settings_reaches_the_document(tmp_path: Path) -> None:
    settings = default_settings()
    seed = tmp_path / "node.nk"
    seed.write_text("SUANOTAREALSEED")
    url = "nats://alice:pw-in-url@10.1.2.3:4223,[::1]"
    variable = "AF_SECRET_VARIABLE"
    kinds = []
    for nats_settings in (
        config.NatsSettings(url=url, embed=False, user="bob", password_env=variable),
        config.NatsSettings(url=url, embed=False, nkey_seed_file=str(seed)),
    ):
        doc = asyncapi_document(facts(settings, url=url, nats=nats_settings), node="n")
        text = json.dumps(doc)
        for secret in ("pw-in-url", "alice", "bob", variable, str(seed), seed.name):
            assert secret not in text
        assert [s["host"] for s in doc["servers"].values()] == ["10.1.2.3:4223", "[::1]:4222"]
        kinds.append({s["type"] for s in doc["components"]["securitySchemes"].values()})
        servers_only = {
            **doc,
            "channels": {},
            "operations": {},
            "components": {"securitySchemes": doc["components"]["securitySchemes"]},
        }
        assert asyncapi_errors(servers_only) == []
    assert kinds == [{"userPassword"}, {"userPassword", "asymmetricEncryption"}]


@pytest.mark.slow
def test_the_document_is_unavailable_until_the_nats_bridge_connects(runtime: Runtime) -> None:
    def no_tree() -> Any:
        raise RuntimeError

    health = Health(
        "n",
        no_tree,
        needs_inference=False,
        needs_nats=True,
        nats=Held("the NATS bridge"),
        pool=Held("the inference pool"),
        resources=Resources(),
    )
    bridge = HttpBridge(
        runtime,
        config.decode({}).http,
        [PingAgent],
        health=health,
        metrics=Metrics(),
        pool=Held("the inference pool"),
    )
    with TestClient(bridge.app, base_url="http://127.0.0.1") as client:
        answer = client.get("/asyncapi.json")
    assert answer.status_code == 503
    assert answer.headers["retry-after"] == "1"
    assert "not connected" in answer.json()["detail"]


# -- a running node ----------------------------------------------------------------


@pytest.fixture
def default_node(auth_nats_server: NatsServer) -> Iterator[tuple[Node, NatsServer, str]]:
    """The default configuration's node (the support service), on a server with users.

    Yields the node, its server and its HTTP edge's URL.
    """
    assert auth_nats_server.users is not None
    settings = default_settings()
    joined = auth_nats_server.users.settings_for(
        config.NatsSettings(url=auth_nats_server.url, embed=False), NODE_USER
    )
    settings = msgspec.structs.replace(
        settings,
        node=msgspec.structs.replace(settings.node, name="doc"),
        nats=joined,
        http=msgspec.structs.replace(settings.http, port=free_port()),
    )
    node = build_node(settings)
    node.start()
    try:
        yield node, auth_nats_server, f"http://{settings.http.host}:{settings.http.port}"
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0


def _get(api: str, path: str) -> httpx.Response:
    return httpx.get(f"{api}{path}", timeout=WAIT)


def _receive_patterns(doc: dict[str, Any]) -> list[tuple[re.Pattern[str], str, str]]:
    """(subject pattern, queue group, operation) of each core-NATS receive operation."""
    found = []
    for key, operation in doc["operations"].items():
        if operation["action"] != "receive" or "x-jetstream" in operation:
            continue
        channel = resolve(doc, operation["channel"]["$ref"])
        parameters = channel.get("parameters", {})

        def alternatives(m: re.Match[str], parameters: dict[str, Any] = parameters) -> str:
            enum = parameters[m.group(1)].get("enum")
            return "(" + "|".join(map(re.escape, enum)) + ")" if enum else r"[^.]+"

        pattern = re.sub(r"\\\{(\w+)\\\}", alternatives, re.escape(channel["address"]))
        queue = operation.get("bindings", {}).get("nats", {}).get("queue", "")
        found.append((re.compile(f"^{pattern}$"), queue, key))
    return found


async def _connect(server: NatsServer, user: str) -> Client:
    assert server.users is not None
    joined = server.users.settings_for(config.NatsSettings(url=server.url, embed=False), user)
    return await nats.connect(server.url, connect_timeout=1, **connect_options(joined))


async def _jetstream(server: NatsServer) -> dict[str, Any]:
    nc = await _connect(server, ADMIN_USER)
    try:
        js = nc.jetstream()
        events = await js.stream_info("AF_EVENTS")
        dead = await js.stream_info("AF_DEAD_LETTERS")
        consumers = await js.consumers_info("AF_EVENTS")
        return {
            "events": events.config.subjects,
            "dead": dead.config.subjects,
            "consumers": {
                (c.config.durable_name, c.config.filter_subject, str(c.config.ack_policy))
                for c in consumers
            },
        }
    finally:
        await nc.close()


@pytest.mark.slow
def test_a_default_node_serves_a_valid_document_of_what_it_subscribes_to(
    default_node: tuple[Node, NatsServer, str],
) -> None:
    node, server, api = default_node
    answer = _get(api, "/asyncapi.json")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/vnd.aai.asyncapi+json")
    doc = answer.json()
    assert asyncapi_errors(doc) == []
    assert server.users is not None
    assert server.users.password_file(NODE_USER).read_text().strip() not in answer.text
    assert doc["servers"]["nats"]["host"] == f"127.0.0.1:{server.port}"
    assert [s["type"] for s in doc["components"]["securitySchemes"].values()] == ["userPassword"]

    bridge = node.runtime.transport
    assert isinstance(bridge, NatsBridge)
    subscribed = {
        (s.subject, s.queue)
        for s in list(bridge.nc._subs.values())
        if not s.subject.startswith("_INBOX.")
    }
    patterns = _receive_patterns(doc)
    for subject, queue in subscribed:
        assert [k for p, q, k in patterns if p.match(subject) and q == queue], subject
    # The worker processes' operations are theirs: this node runs its tiers in process.
    ours = [(p, q, k) for p, q, k in patterns if not k.startswith(("serveGen", "receiveCan"))]
    for pattern, queue, key in ours:
        assert any(pattern.match(s) and q == queue for s, q in subscribed), key

    held = asyncio.run(_jetstream(server))
    documented = [o["x-jetstream"] for o in doc["operations"].values() if "x-jetstream" in o]
    consumers = {
        (j["durable"], j["filterSubject"], j["ackPolicy"]) for j in documented if "durable" in j
    }
    assert consumers == held["consumers"]
    streams = {
        (c["x-jetstream"]["stream"], c["x-jetstream"]["subjects"])
        for c in doc["channels"].values()
        if "x-jetstream" in c
    }
    assert streams == {("AF_EVENTS", *held["events"]), ("AF_DEAD_LETTERS", *held["dead"])}


@pytest.mark.slow
def test_what_a_default_node_answers_and_publishes_fits_its_document(
    default_node: tuple[Node, NatsServer, str],
) -> None:
    node, server, api = default_node
    doc = _get(api, "/asyncapi.json").json()
    bridge = node.runtime.transport
    assert isinstance(bridge, NatsBridge)
    ticket = TicketCreated(ticket_id="t-9", intent=Intent.BILLING, conversation_id="c-9")
    meta = Metadata(id="e-9", deadline=time.time() + WAIT, sender="support/0")
    bridge.io.run(bridge.publish_async(ticket, meta), timeout=WAIT)

    async def exchange() -> tuple[Any, Any, Any]:
        nc, admin = await _connect(server, NODE_USER), await _connect(server, ADMIN_USER)
        try:
            bare = await nc.request(
                "af.agent.ping", encode(Ping(payload="hi")), timeout=WAIT, headers={"Af-Id": "b-1"}
            )
            enveloped = await nc.request(
                "af.agent.ping", encode_request(Ping(payload="hi"), META), timeout=WAIT
            )
            stored = await admin.jetstream().get_last_msg("AF_EVENTS", "af.evt.TicketCreated")
            return bare, enveloped, stored
        finally:
            await nc.close()
            await admin.close()

    bare, enveloped, stored = asyncio.run(exchange())
    pong = "#/channels/agent.ping.reply/messages/Pong"
    assert conforms(doc, f"{pong}/payload", decoded(bare.data)) == []
    assert conforms(doc, f"{pong}/headers", dict(bare.headers)) == []
    assert conforms(doc, f"{pong}/payload", decoded(enveloped.data)) == []
    event = "#/channels/event.TicketCreated/messages/TicketCreated"
    assert stored.subject == doc["channels"]["event.TicketCreated"]["address"]
    assert conforms(doc, f"{event}/payload", decoded(stored.data)) == []
    assert conforms(doc, f"{event}/headers", dict(stored.headers or {})) == []


@pytest.mark.slow
def test_a_closed_edge_refuses_the_document_without_a_key(
    serve: Callable[..., tuple[Node, Any]],
) -> None:
    _node, client = serve(api_keys=["k-1"])
    refused = client.get("/asyncapi.json")
    assert refused.status_code == 401
    assert refused.headers["content-type"].startswith("application/problem+json")
    answer = client.get("/asyncapi.json", headers={"X-API-Key": "k-1"})
    assert answer.status_code == 200
    doc = answer.json()
    assert doc["channels"] == {}  # this node runs without NATS
    assert asyncapi_errors(doc) == []
    assert client.get("/schema/openapi.json").json()["paths"].get("/asyncapi.json") is None
