"""Settings of the inference pool: tiers, backends and scripted rules."""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Annotated, ClassVar, Final, Literal

import msgspec

from config._base import Count, NonNegative, Positive, Section, Token
from messages import ConfigError

# An exllamav2 worker runs one generation at once until its engine says more.
EXLLAMAV2_CAPACITY: Final = 1
# exllamav2 allocates its cache in pages of this many tokens.
EXLLAMAV2_PAGE: Final = 256
LLAMACPP_CAPACITY: Final = 1


class ScriptedRule(Section, frozen=True, kw_only=True):
    """Answer `reply` when `pattern` (a regular expression) is in the prompt's last line."""

    pattern: str
    reply: str


class _RulesFile(Section, frozen=True, kw_only=True):
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


class BackendSection(Section, frozen=True, kw_only=True):
    """What the settings of every backend show, so nothing above the pool matches on the kind.

    Each backend's settings have `model`, `capacity` and `context_length`
    (fields, or properties where they follow from other fields): what a
    tier's workers are taken to be until one of them answers.

    Attributes:
        process_default: Whether a tier runs its workers as OS processes when
            its `process` is unset.
    """

    process_default: ClassVar[bool] = False


class ScriptedBackendSettings(
    BackendSection, frozen=True, kw_only=True, tag="scripted", tag_field="kind"
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


class OpenAIBackendSettings(
    BackendSection, frozen=True, kw_only=True, tag="openai", tag_field="kind"
):
    """Any OpenAI-compatible server (vLLM, TabbyAPI, llama.cpp server), streamed.

    Attributes:
        url: Base URL up to `/v1`, e.g. `http://127.0.0.1:8000/v1`.
        model: The model name the server serves.
        api_key_env: Environment variable holding the API key; empty: none.
        capacity: Requests one worker sends at once.
        context_length: The model's context, in tokens.
        connect_timeout: Seconds to connect.
        response_format: How an output schema is sent: `json_schema`
            (OpenAI's own form; vLLM, TabbyAPI, llama.cpp's `llama-server`)
            or `json_object` (`{"type": "json_object", "schema": ...}`, what
            llama-cpp-python's server takes).
        request_id_header: The header that carries each request's message id
            (for the server's logs); empty: none. llama-cpp-python's server
            answers 400 to an `X-Request-Id` that is not a UUID: set it empty
            there.
    """

    url: str
    model: str
    api_key_env: str = ""
    capacity: Annotated[int, msgspec.Meta(ge=1)] = 8
    context_length: Annotated[int, msgspec.Meta(ge=1)] = 8192
    connect_timeout: Positive = 5.0
    response_format: Literal["json_schema", "json_object"] = "json_schema"
    request_id_header: Annotated[
        str, msgspec.Meta(max_length=64, pattern=r"^([A-Za-z0-9-]+)?$(?!\n)")
    ] = "X-Request-Id"


class ExLlamaV2BackendSettings(
    BackendSection, frozen=True, kw_only=True, tag="exllamav2", tag_field="kind"
):
    """A quantized EXL2/GPTQ model on this node's CUDA GPU (the `gpu` extra).

    Attributes:
        model_dir: The model directory.
        cache_mode: KV cache precision: `FP16`, `Q4`, `Q6` or `Q8`.
        max_seq_len: Context length, a multiple of 256 (exllamav2's cache
            page, which it asserts); 0 keeps the model's.
    """

    process_default: ClassVar[bool] = True  # a CUDA fault takes down one worker, not the node

    model_dir: str
    cache_mode: Literal["FP16", "Q4", "Q6", "Q8"] = "FP16"
    max_seq_len: Annotated[int, msgspec.Meta(ge=0, multiple_of=EXLLAMAV2_PAGE)] = 0

    @property
    def model(self) -> str:
        """The model directory's name, as results show it."""
        return Path(self.model_dir).name

    @property
    def capacity(self) -> int:
        """1 until the engine, once loaded, reports its batch size."""
        return EXLLAMAV2_CAPACITY

    @property
    def context_length(self) -> int:
        """`max_seq_len`; 0: the model's own, unknown until it is loaded."""
        return self.max_seq_len


class LlamaCppBackendSettings(
    BackendSection, frozen=True, kw_only=True, tag="llamacpp", tag_field="kind"
):
    """A quantized GGUF model on this node's CPU, through llama.cpp (the `cpu` extra).

    Each worker process runs one generation at a time: a tier's slots are its
    `workers`.

    Attributes:
        model_path: The `.gguf` file (Q4_0, Q8_0, K-quants, ...).
        n_ctx: Context length in tokens; 0 takes the model's own.
        n_threads: Threads each worker decodes with; 0 lets llama.cpp choose
            (half the CPUs). Workers times threads should not exceed the cores.
        n_batch: Prompt tokens evaluated per batch.
        seed: The seed of a generation whose request names none.
        repack: Let llama.cpp repack the weights for the CPU's fastest
            kernels (AVX2/AVX-512 repacking, AMX; llama.cpp's extra buffer
            types). Off by default: its AMX kernels crashed the process on a
            VM whose CPU reports AMX.
    """

    process_default: ClassVar[bool] = True  # one model per process, its own crash domain

    model_path: str
    n_ctx: Count = 0
    n_threads: Count = 0
    n_batch: Annotated[int, msgspec.Meta(ge=1, le=1 << 16)] = 512
    seed: Annotated[int, msgspec.Meta(ge=0, le=(1 << 32) - 1)] = 0
    repack: bool = False

    @property
    def model(self) -> str:
        """The file's name without `.gguf`, as results show it."""
        return Path(self.model_path).stem

    @property
    def capacity(self) -> int:
        """1: a worker decodes one sequence at a time."""
        return LLAMACPP_CAPACITY

    @property
    def context_length(self) -> int:
        """`n_ctx`; 0: the model's own, unknown until it is loaded."""
        return self.n_ctx


class RemoteBackendSettings(
    BackendSection, frozen=True, kw_only=True, tag="remote", tag_field="kind"
):
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


# A new backend is one settings class here, a member of this union, and its
# entry in inference's registry (inference/_registry.py).
BackendSettings = (
    ScriptedBackendSettings
    | OpenAIBackendSettings
    | ExLlamaV2BackendSettings
    | LlamaCppBackendSettings
    | RemoteBackendSettings
)


class TierSettings(Section, frozen=True, kw_only=True):
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
            CUDA fault then takes down one worker, not the node. Unset: the
            backend's `process_default` (on for `exllamav2` and `llamacpp`, off for the rest).
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
            return self.backend.process_default
        return self.process

    @property
    def reached_over_nats(self) -> bool:
        """Whether the tier's workers are processes of this node or of others."""
        return self.runs_processes or isinstance(self.backend, RemoteBackendSettings)

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


class InferenceSettings(Section, frozen=True, kw_only=True):
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
