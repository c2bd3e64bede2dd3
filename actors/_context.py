"""Context: an agent's one door to the world while it handles a message."""

from __future__ import annotations

import itertools
import time
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, overload

import msgspec

from actors._audit import SERVICE_SUBJECT, AuditedStream, Auditor, DataKeys, ErasureFence
from actors._state import state_key
from messages import (
    AgentError,
    BadRequest,
    Event,
    GenerateRequest,
    GenerateResult,
    Unavailable,
    check_acts_for,
    decode_output,
    new_message_id,
    output_schema,
    require_event,
)

if TYPE_CHECKING:
    from actors._ports import GenerationStream, Inference, StateStore
    from actors._ref import AgentRef
    from actors._reply import Reply
    from actors._runtime import Runtime
    from messages import Message, Metadata, Principal

A = TypeVar("A")
R = TypeVar("R")
A_contra = TypeVar("A_contra", contravariant=True)
R_co = TypeVar("R_co", covariant=True)
OutputT = TypeVar("OutputT")

# How long `publish_once` remembers a published event id (a week, like tool results).
PUBLISHED_TTL: Final = 7 * 24 * 3600.0


class Owner(Protocol):
    """What a context needs of the agent whose message it serves (an `Agent`)."""

    @property
    def agent_type(self) -> str:
        """The agent's type."""
        ...

    @property
    def name(self) -> str:
        """`type/instance`."""
        ...

    @property
    def permissions(self) -> frozenset[str]:
        """The tool permissions its class declares."""
        ...

    @property
    def runtime(self) -> Runtime:
        """The node it runs on."""
        ...


class Usable(Protocol[A_contra, R_co]):
    """What `Context.use` calls: a `Tool`."""

    def invoke(self, ctx: Context, args: A_contra | dict[str, Any], ordinal: int) -> R_co:
        """Make the `ordinal`-th tool call of the message `ctx` handles."""
        ...


class Context:
    """What a handler may use: the request's metadata and budget, and other agents.

    Asks made through the context inherit the request's deadline (never a
    later one), priority and trace, and name the request as their cause, so
    a chain of agents shares one budget.
    """

    __slots__ = (
        "_agent",
        "_data_keys",
        "_fences",
        "_published",
        "_reply",
        "_tool_calls",
        "conversation_id",
        "metadata",
        "started",
        "user_id",
    )

    def __init__(self, agent: Owner, metadata: Metadata, reply: Reply[Any] | None = None) -> None:
        self._agent = agent
        self.metadata = metadata
        self._reply = reply
        self._published: itertools.count[int] | None = None
        self._tool_calls: itertools.count[int] | None = None
        self._data_keys: dict[str, tuple[str, bytes]] | None = None  # made on first generation
        self._fences: dict[str, ErasureFence] | None = None
        self.started = time.time()
        self.user_id: str | None = None
        self.conversation_id: str | None = None

    def on_behalf_of(self, user_id: str, conversation_id: str | None = None) -> None:
        """Say whom this message is handled for (and in which conversation).

        Audit records of its generations are sealed with that user's data
        key and name the conversation. Call it before reading anything of
        the user's: it reads the user's erasure fence (one state read).

        Raises:
            Forbidden: If the request's principal may not act for `user_id`.
            Unavailable: If there is no state store to read the fence from,
                or the user's data is being erased (with `retry_after`).
        """
        self.check_acts_for(user_id, what="act")
        self.user_id = user_id
        self.conversation_id = conversation_id
        self.erasure_fence(user_id).check_not_running()

    @property
    def principal(self) -> Principal | None:
        """Who the request acts for, as its edge authenticated it (`messages.Principal`).

        None for a request from inside the trust boundary: another node over
        NATS without one, an event, an open loopback edge.
        """
        return self.metadata.principal

    def check_acts_for(self, user_id: str, *, what: str = "do that") -> None:
        """Raise unless the request's principal may read or change `user_id`'s data.

        Raises:
            Forbidden: It may not (a user acting for another user).
        """
        check_acts_for(self.metadata.principal, user_id, what=what)

    def erasure_fence(self, subject: str) -> ErasureFence:
        """The subject's erasure mark as this message first saw it (read on first use).

        Check it (`check()` / `broken()`) before writing back anything read
        of the subject: an erasure that began since breaks it.

        Raises:
            Unavailable: If there is no state store.
        """
        if self._fences is None:
            self._fences = {}
        fence = self._fences.get(subject)
        if fence is None:
            fence = self._fences[subject] = ErasureFence(self.state, subject)
        return fence

    @property
    def agent_type(self) -> str:
        """The handling agent's type."""
        return self._agent.agent_type

    @property
    def agent_permissions(self) -> frozenset[str]:
        """The permissions the agent's class declares (the config may replace them)."""
        return self._agent.permissions

    def use(self, used: Usable[A, R], args: A | dict[str, Any]) -> R:
        """Call a tool: permission checked, arguments and result validated.

        A side-effecting tool called again by a retry of this message (same
        message id) returns the first call's result without acting twice.

        Raises:
            messages.Forbidden: If this agent type may not call the tool.
            messages.BadRequest: If the arguments do not fit the tool.
        """
        if self._tool_calls is None:
            self._tool_calls = itertools.count(1)
        return used.invoke(self, args, next(self._tool_calls))

    def emit(self, chunk: Message) -> bool:
        """Send an intermediate chunk to a caller that streams (HTTP SSE, `on_chunk`).

        Chunks reach the caller in order and before the handler's reply. A
        caller that takes only the reply never sees them; neither does one
        that has gone away. Returns whether a caller listens.
        """
        reply = self._reply
        if reply is None or reply.on_chunk is None or reply.done():
            return False
        reply.on_chunk(chunk)
        return True

    @property
    def streaming(self) -> bool:
        """Whether the caller takes intermediate chunks (`emit`)."""
        return self._reply is not None and self._reply.on_chunk is not None

    @property
    def agent(self) -> str:
        """The handling agent's `type/instance` name."""
        return self._agent.name

    @property
    def runtime(self) -> Runtime:
        """The node's shared services."""
        return self._agent.runtime

    @property
    def deadline(self) -> float:
        """The request's absolute deadline (epoch seconds)."""
        return self.metadata.deadline

    @property
    def state(self) -> StateStore:
        """The node's state store, for what must outlive this message.

        Raises:
            Unavailable: If the node was started without one.
        """
        store = self._agent.runtime.state
        if store is None:
            msg = f"no state store is configured on node {self._agent.runtime.node}"
            raise Unavailable(msg)
        return store

    @property
    def delivery(self) -> int:
        """How many times this message has been delivered (events may come again)."""
        return self.metadata.delivery

    def publish(self, event: Event, *, message_id: str | None = None) -> str:
        """Store a domain event on the event stream; return its message id.

        Returns once the event is stored. Its id defaults to this message's
        id plus the publish's ordinal in this handler, so a retried request
        (same id) that publishes again is dropped as a duplicate.

        Raises:
            messages.Unavailable: If the node has no transport.
            messages.AgentError: If the event could not be stored in time.
        """
        require_event(event)
        transport = self._agent.runtime.transport
        if transport is None:
            msg = f"node {self._agent.runtime.node} has no transport for events"
            raise Unavailable(msg)
        if message_id is None:
            if self._published is None:
                self._published = itertools.count(1)
            message_id = f"{self.metadata.id}.e{next(self._published)}"
        transport.publish(event, self._cause(message_id))
        return message_id

    def publish_once(self, event: Event, *, message_id: str) -> bool:
        """Publish `event` unless an earlier attempt of this message already did.

        JetStream drops a repeated `message_id` only within its duplicate
        window; a retry that comes later (after a crash, say) would publish
        again. This records each published id in the state store for
        `PUBLISHED_TTL` seconds and skips ids found there. Returns whether
        it published. (A crash between the publish and the record still
        repeats the event, inside the window as a dropped duplicate.)

        Raises:
            messages.Unavailable: If the node has no state store (or transport).
        """
        marker = state_key("published", message_id)
        if self.state.get(marker) is not None:
            return False
        self.publish(event, message_id=message_id)
        self.state.put(marker, b"", ttl=PUBLISHED_TTL)
        return True

    @overload
    def generate(
        self, request: GenerateRequest | str, *, output: None = None, **fields: Any
    ) -> GenerateResult: ...

    @overload
    def generate(
        self, request: GenerateRequest | str, *, output: type[OutputT], **fields: Any
    ) -> OutputT: ...

    def generate(
        self, request: GenerateRequest | str, *, output: type[OutputT] | None = None, **fields: Any
    ) -> GenerateResult | OutputT:
        """Ask the inference pool for a completion and wait for it (within this deadline).

        `request` is a `GenerateRequest`, or a prompt string with the
        request's other fields as keywords. The generation inherits this
        message's deadline and priority.

        With `output` (any msgspec-decodable type), the backend constrains
        decoding to that type's JSON Schema and the text is returned decoded
        into it.

        Raises:
            messages.OutputInvalid: If `output` is given and the text is not a
                valid one (cut by `max_tokens`, or a backend that could not
                constrain it).
            messages.Unavailable: If the node runs no inference pool.
            messages.AgentError: Overloaded, timeout, bad request, ...
        """
        full = _request(request, _with_output(request, fields, output))
        result = self._generate(full)
        return result if output is None else decode_output(result.text, output)

    def _generate(self, full: GenerateRequest) -> GenerateResult:
        inference = self._inference()
        meta = self._cause(new_message_id())
        auditor = self._auditor()
        if auditor is None:
            return inference.generate(full, meta)
        started = time.time()
        try:
            result = inference.generate(full, meta)
        except AgentError as exc:
            auditor.failed(full, meta, started=started, error=exc)
            raise
        auditor.record(full, meta, started=started, result=result)
        return result

    def generate_stream(
        self, request: GenerateRequest | str, *, output: type[Any] | None = None, **fields: Any
    ) -> GenerationStream:
        """Like `generate`, but iterate over the chunks as they are produced.

        The final `GenerateResult` is the stream's `result` once the
        iteration ends; `close()` it to stop early and free the slot. With
        `output`, decoding is constrained to that type's JSON Schema; decode
        the result's text with `messages.decode_output`.
        """
        full = _request(request, _with_output(request, fields, output))
        meta = self._cause(new_message_id())
        auditor = self._auditor()  # before the stream: it would hold a slot if this failed
        stream = self._inference().stream(full, meta)
        if auditor is None:
            return stream
        started = time.time()

        def done(result: GenerateResult | None, text: str, error: AgentError | None) -> None:
            if error is not None:
                auditor.failed(full, meta, started=started, error=error)
            else:
                auditor.record(full, meta, started=started, result=result, response=text)

        return AuditedStream(stream, done)

    @property
    def data_keys(self) -> DataKeys:
        """The users' data keys, for sealing what is kept about them (`seal_value`).

        Keys read are remembered for this message only, and no key is made
        for a user whose erasure began since the message did.

        Raises:
            Unavailable: If there is no state store.
        """
        return DataKeys(self.state, memo=self._memo(), fence=self.erasure_fence)

    def _memo(self) -> dict[str, tuple[str, bytes]]:
        if self._data_keys is None:
            self._data_keys = {}
        return self._data_keys

    def _auditor(self) -> Auditor | None:
        runtime = self._agent.runtime
        if runtime.audit is None:
            if runtime.audit_required:
                msg = f"node {runtime.node}: the audit log is not open (yet); nothing is generated"
                raise Unavailable(msg)
            return None
        return Auditor(
            runtime.audit,
            self.data_keys,
            node=runtime.node,
            agent=self._agent.name,
            subject=self.user_id if self.user_id is not None else SERVICE_SUBJECT,
            conversation_id=self.conversation_id,
        )

    def _inference(self) -> Inference:
        inference = self._agent.runtime.inference
        if inference is None:
            msg = f"node {self._agent.runtime.node} runs no inference pool"
            raise Unavailable(msg)
        return inference

    def _cause(self, message_id: str) -> Metadata:
        """Metadata of something this message causes: its deadline, priority and trace."""
        return msgspec.structs.replace(
            self.metadata,
            id=message_id,
            correlation_id=self.metadata.id,
            sender=self._agent.name,
            delivery=1,
        )

    def remaining(self) -> float:
        """Seconds left before the deadline (negative once it has passed)."""
        return self.metadata.deadline - time.time()

    def ask_async(
        self, target: str | AgentRef, message: Any, *, timeout: float | None = None
    ) -> Reply[Any]:
        """Ask another agent without waiting; see `ask`."""
        return self._resolve(target).ask_async(
            message, timeout=timeout, sender=self._agent.name, cause=self.metadata
        )

    def ask(self, target: str | AgentRef, message: Any, *, timeout: float | None = None) -> Any:
        """Ask another agent (by type or reference) and wait for its reply.

        The ask's deadline is this request's deadline, or `timeout` seconds
        from now if that is sooner.
        """
        return self.ask_async(target, message, timeout=timeout).get()

    def tell(self, target: str | AgentRef, message: Any) -> None:
        """Send a message to another agent without waiting for a reply."""
        self._resolve(target).tell(message, sender=self._agent.name, cause=self.metadata)

    def _resolve(self, target: str | AgentRef) -> AgentRef:
        if isinstance(target, str):
            return self._agent.runtime.ref(target)
        return target


def _with_output(
    request: GenerateRequest | str, fields: dict[str, Any], output: type[Any] | None
) -> dict[str, Any]:
    if output is None:
        return fields
    if isinstance(request, GenerateRequest) and request.output is not None:
        msg = "bad generate() arguments: the request names its output already; give it once"
        raise BadRequest(msg)
    return {**fields, "output": output_schema(output)}


def _request(request: GenerateRequest | str, fields: dict[str, Any]) -> GenerateRequest:
    unknown = sorted(set(fields) - set(GenerateRequest.__struct_fields__))
    if unknown:
        msg = f"bad generate() arguments: GenerateRequest has no field {', '.join(unknown)}"
        raise BadRequest(msg)
    if isinstance(request, GenerateRequest):
        if not fields:
            return request
        base = msgspec.structs.asdict(request)
    else:
        base = {"prompt": request}
    try:
        return msgspec.convert({**base, **fields}, GenerateRequest, from_attributes=True)
    except msgspec.ValidationError as exc:
        msg = f"bad generate() arguments: {exc}"
        raise BadRequest(msg) from exc
