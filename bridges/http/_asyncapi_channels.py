"""The NATS subjects of one node as AsyncAPI channels and operations.

Every address comes from the functions the bridge itself uses
(`bridges.nats.Subjects`, nats.micro's `control_subject`), called with
`{parameter}` for what varies at run time (a tier, a worker), so the
document cannot drift from the subjects. What crosses a subject is taken
from the same places as the bridge takes it: an agent's request types
(`request_types`), the replies its handlers are annotated with
(`reply_types`, as for the OpenAPI document), the events it handles
(`event_types`).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from nats.js.api import AckPolicy, DeliverPolicy
from nats.micro.service import (
    INFO_RESPONSE_TYPE,
    PING_RESPONSE_TYPE,
    STATS_RESPONSE_TYPE,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)

from bridges.http._asyncapi_messages import (
    Schemas,
    bare_message,
    chunk_message,
    error_message,
    event_message,
    frame_message,
    generation_message,
    json_message,
    message_name,
    reply_message,
    request_message,
)
from bridges.http._schema import reply_types
from bridges.nats._serving import event_types, request_types
from bridges.nats._wire import ERROR_TAG, Subjects, check_token
from messages import (
    CancelGeneration,
    ErrorReply,
    Event,
    GenerateRequest,
    GenerateResult,
    GenerationAlive,
    GenerationStarted,
    TokenChunk,
    WorkerReady,
)

if TYPE_CHECKING:
    from actors import Agent
    from config import EventSettings, NatsSettings

NATS_BINDING: Final = "0.1.0"
_JETSTREAM: Final = "x-jetstream"
_FRAMES: Final = (GenerationStarted, TokenChunk, GenerationAlive, GenerateResult)
_MICRO: Final[dict[ServiceVerb, tuple[type, str]]] = {
    ServiceVerb.PING: (ServicePing, PING_RESPONSE_TYPE),
    ServiceVerb.INFO: (ServiceInfo, INFO_RESPONSE_TYPE),
    ServiceVerb.STATS: (ServiceStats, STATS_RESPONSE_TYPE),
}
_WORKERS: Final = "The node's model worker processes (a tier with `process = true`)."


@dataclass(frozen=True, kw_only=True)
class NatsFacts:
    """What one node does on NATS, as its running bridge has it.

    Attributes:
        url: The server URL(s) the node connects to.
        nats: The `[nats]` settings it connects with.
        subjects: The deployment's subjects (`nats.prefix`).
        events: The `[events]` settings: streams, consumers, delivery.
        served: The agent classes the node serves (its queue groups).
        asked: Agent classes it asks over NATS without serving them (a gateway).
        tiers: The node's inference tiers (their workers may be reached over NATS).
    """

    url: str
    nats: NatsSettings
    subjects: Subjects
    events: EventSettings
    served: Sequence[type[Agent]] = ()
    asked: Sequence[type[Agent]] = ()
    tiers: Sequence[str] = ()


def published_events(agent_class: type[Agent]) -> list[type[Event]]:
    """The events an agent's module names: what its handlers can `ctx.publish`.

    Handlers do not declare what they publish; the events their module
    defines or imports are what they can name.
    """
    module = sys.modules.get(agent_class.__module__)
    names = vars(module).values() if module is not None else ()
    return [v for v in names if isinstance(v, type) and issubclass(v, Event) and v is not Event]


def _ref(*parts: str) -> dict[str, str]:
    return {"$ref": "#/" + "/".join(p.replace("~", "~0").replace("/", "~1") for p in parts)}


def _tags(name: str) -> list[dict[str, str]]:
    return [{"name": name}]


class NatsApi:
    """The channels and operations of a node, with the schemas and messages they use.

    Args:
        facts: What the node does on NATS.
    """

    def __init__(self, facts: NatsFacts) -> None:
        self.facts = facts
        self.consumed = [(a, e) for a in facts.served for e in event_types(a)]
        self.published = list(dict.fromkeys(e for a in facts.served for e in published_events(a)))
        self.schemas = Schemas(self._payload_types())
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {ERROR_TAG: error_message(self.schemas)}
        for agent_class in facts.served:
            self._agent(agent_class, served=True)
        for agent_class in facts.asked:
            self._agent(agent_class, served=False)
        self._events()
        if facts.tiers:
            self._inference()
        if facts.served:
            self._discovery()

    def _payload_types(self) -> list[Any]:
        found: list[Any] = []
        for agent_class in (*self.facts.served, *self.facts.asked):
            accepted = request_types(agent_class)
            found += [*accepted, *reply_types(agent_class, accepted)]
            if agent_class.chunk_type is not None:
                found.append(agent_class.chunk_type)
        found += [e for _, e in self.consumed] + self.published
        if self.facts.tiers:
            found += [GenerateRequest, *_FRAMES, CancelGeneration, WorkerReady]
        if self.facts.served:
            found += [response for response, _ in _MICRO.values()]
        return found

    def _channel(
        self,
        key: str,
        address: str | None,
        messages: dict[str, Any],
        *,
        jetstream: dict[str, Any] | None = None,
        **more: Any,
    ) -> None:
        channel = {"address": address, "messages": messages, **more}
        self.channels[key] = channel if jetstream is None else {**channel, _JETSTREAM: jetstream}

    def _operation(
        self,
        key: str,
        action: str,
        channel: str,
        *,
        reply: str | None = None,
        jetstream: dict[str, Any] | None = None,
        **more: Any,
    ) -> None:
        operation: dict[str, Any] = {
            "action": action,
            "channel": _ref("channels", channel),
            "messages": [_ref("channels", channel, "messages", n) for n in self._names(channel)],
        }
        if reply is not None:
            names = self._names(reply)
            operation["reply"] = {
                "channel": _ref("channels", reply),
                "messages": [_ref("channels", reply, "messages", n) for n in names],
            }
        if jetstream is not None:
            more[_JETSTREAM] = jetstream
        self.operations[key] = {**operation, **more}

    def _names(self, channel: str) -> list[str]:
        return list(self.channels[channel]["messages"])

    # -- agents ---------------------------------------------------------------

    def _agent(self, agent_class: type[Agent], *, served: bool) -> None:
        agent_type = check_token(agent_class.agent_type, what="agent type")
        accepted = request_types(agent_class)
        requests = {message_name(t): request_message(self.schemas, t) for t in accepted}
        replies: dict[str, Any] = {
            message_name(t): reply_message(self.schemas, t)
            for t in reply_types(agent_class, accepted)
        }
        replies[ERROR_TAG] = _ref("components", "messages", ERROR_TAG)
        if agent_class.chunk_type is not None:
            replies["chunk"] = chunk_message(self.schemas, agent_class.chunk_type)
        key = f"agent.{agent_type}"
        doc = (agent_class.__doc__ or agent_class.__name__).strip().split("\n")[0]
        summary = doc if accepted else f"{doc} It takes no requests over NATS: bad_request."
        self._channel(
            key,
            self.facts.subjects.agent(agent_type),
            requests,
            title=f"{agent_type} requests",
            summary=summary,
        )
        self._channel(
            f"{key}.reply",
            None,
            replies,
            title=f"{agent_type} replies",
            description="The request's reply subject: an inbox of the caller's.",
        )
        binding = {"nats": {"queue": agent_type, "bindingVersion": NATS_BINDING}}
        self._operation(
            f"{'serve' if served else 'ask'}.{agent_type}",
            "receive" if served else "send",
            key,
            reply=f"{key}.reply",
            summary=(
                f"Serve {agent_type} requests in queue group {agent_type}, while this node"
                " has live agents of the type; every failure is an ErrorReply."
                if served
                else f"Ask {agent_type} agents on other nodes (this node's HTTP edge does)."
            ),
            tags=_tags("agents"),
            **({"bindings": binding} if served else {}),
        )

    # -- events ---------------------------------------------------------------

    def _events(self) -> None:
        s = self.facts.events
        names = {e: check_token(e.__name__, what="event type") for _, e in self.consumed}
        names |= {e: check_token(e.__name__, what="event type") for e in self.published}
        for event_type, name in names.items():
            self._event_channel(f"event.{name}", event_type, dead_letter=False)
        for event_type in self.published:
            name = names[event_type]
            self._operation(
                f"publish.{name}",
                "send",
                f"event.{name}",
                summary=f"Agents of this node publish {name} (`ctx.publish`).",
                tags=_tags("events"),
            )
        for agent_class, event_type in self.consumed:
            self._consumer(agent_class, names[event_type])
        for event_type in dict.fromkeys(e for _, e in self.consumed):
            name = names[event_type]
            self._event_channel(f"deadLetter.{name}", event_type, dead_letter=True)
            self._operation(
                f"deadLetter.{name}",
                "send",
                f"deadLetter.{name}",
                summary=f"A {name} whose handling failed {s.max_deliver} times, then terminated.",
                tags=_tags("events"),
            )

    def _event_channel(self, key: str, event_type: type[Event], *, dead_letter: bool) -> None:
        s, subjects = self.facts.events, self.facts.subjects
        name = event_type.__name__
        stream = s.dead_letter_stream if dead_letter else s.stream
        self._channel(
            key,
            subjects.dead_letter(name) if dead_letter else subjects.event(name),
            {
                message_name(event_type): event_message(
                    self.schemas, event_type, dead_letter=dead_letter
                )
            },
            title=f"{name} {'dead letters' if dead_letter else 'events'}",
            description=f"Stored in the JetStream stream {stream}; delivered at least once.",
            jetstream={
                "stream": stream,
                "subjects": subjects.all_dead_letters() if dead_letter else subjects.all_events(),
            },
        )

    def _consumer(self, agent_class: type[Agent], name: str) -> None:
        s = self.facts.events
        durable = f"{agent_class.agent_type}_{name}"
        self._operation(
            f"consume.{durable}",
            "receive",
            f"event.{name}",
            summary=f"{agent_class.agent_type} agents handle {name}: durable consumer {durable}.",
            description=(
                "A pull consumer that every node running the agent type shares, so each"
                " event is handled by one of them. Acked once the handler returns; a"
                f" failure is redelivered after `backoff`, up to {s.max_deliver} deliveries,"
                " then dead-lettered."
            ),
            tags=_tags("events"),
            jetstream={
                "stream": s.stream,
                "durable": durable,
                "filterSubject": self.facts.subjects.event(name),
                "ackPolicy": AckPolicy.EXPLICIT.value,
                "deliverPolicy": DeliverPolicy.ALL.value,
                "maxDeliver": s.max_deliver,
                "backoff": list(s.backoff),
                "handlerTimeout": s.handler_timeout,
            },
        )

    # -- inference ------------------------------------------------------------

    def _inference(self) -> None:
        subjects, schemas = self.facts.subjects, self.schemas
        tier = {
            "enum": list(self.facts.tiers),
            "description": (
                "A tier of the node's pool. Only a tier whose workers run in their own"
                ' processes (`process = true`) or on other nodes (`kind = "remote"`)'
                " is reached over NATS; the others never leave the process."
            ),
        }
        worker = {"description": "A worker's id, as its GenerationStarted says."}
        frames = {message_name(t): frame_message(schemas, t) for t in _FRAMES}
        frames[ERROR_TAG] = frame_message(schemas, ErrorReply, ERROR_TAG)
        self._channel(
            "inference.generate",
            subjects.inference("{tier}"),
            {message_name(GenerateRequest): generation_message(schemas, GenerateRequest)},
            parameters={"tier": tier},
            title="Generation requests",
        )
        self._channel(
            "inference.frames",
            None,
            frames,
            title="A generation's frames",
            description=(
                "On the request's reply subject: GenerationStarted (who took it and where"
                " to cancel it), TokenChunks, a GenerationAlive every heartbeat while it"
                " runs, then the GenerateResult or an ErrorReply. Three heartbeats of"
                " silence mean the worker is gone."
            ),
        )
        ready = {message_name(WorkerReady): bare_message(schemas, WorkerReady, "Bare.")}
        self._channel(
            "inference.ready",
            subjects.inference_ready("{tier}"),
            ready,
            parameters={"tier": tier},
            title="Workers that now take requests",
        )
        cancel = {
            message_name(CancelGeneration): bare_message(
                schemas, CancelGeneration, "Bare; names the generation by its message id."
            )
        }
        self._channel(
            "inference.control",
            subjects.inference_control("{tier}", "{worker}"),
            cancel,
            parameters={"tier": tier, "worker": worker},
            title="Cancellations for one worker",
        )
        for key, action, channel, reply, summary in (
            ("generate", "send", "inference.generate", "inference.frames", "The pool sends."),
            ("serveGenerations", "receive", "inference.generate", "inference.frames", _WORKERS),
            ("announceWorkers", "send", "inference.ready", None, _WORKERS),
            ("cancelGenerations", "send", "inference.control", None, "The pool cancels."),
            ("receiveCancellations", "receive", "inference.control", None, _WORKERS),
        ):
            self._operation(
                key, action, channel, reply=reply, summary=summary, tags=_tags("inference")
            )

    # -- discovery ------------------------------------------------------------

    def _discovery(self) -> None:
        services = [a.agent_type for a in self.facts.served]
        service = {"enum": services, "description": "A served agent type's service."}
        instance = {"description": "The service instance's id (new at each start)."}
        ask = {"name": "request", "payload": {"description": "Empty: the body is not read."}}
        for verb, (response, kind) in _MICRO.items():
            reply = f"discovery.{verb.value.lower()}.reply"
            text = f"nats.micro's {kind} answer."
            self.channels[reply] = {
                "address": None,
                "messages": {response.__name__: json_message(self.schemas, response, text)},
            }
            scopes: tuple[tuple[str, str, dict[str, Any]], ...] = (
                ("", control_subject(verb), {}),
                (".service", control_subject(verb, name="{service}"), {"service": service}),
                (
                    ".instance",
                    control_subject(verb, name="{service}", id="{id}"),
                    {"service": service, "id": instance},
                ),
            )
            for suffix, address, parameters in scopes:
                key = f"discovery.{verb.value.lower()}{suffix}"
                more = {"parameters": parameters} if parameters else {}
                self._channel(key, address, {"request": ask}, **more)
                self._operation(
                    key,
                    "receive",
                    key,
                    reply=reply,
                    summary=f"$SRV {verb.value}: NATS micro discovery of the served agent types.",
                    tags=_tags("discovery"),
                )
