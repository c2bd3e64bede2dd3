"""The backends by the settings that choose them: the one table a new backend joins.

A backend is one module here (its class and a `*_from_settings` function)
and one settings class in `config` (a member of `config.BackendSettings`),
registered with one `Kind` in `KINDS`. A kind's module is imported only
when a tier chooses it, so it may import its engine at the top;
`check_available` looks for the modules an extra installs without importing
them, so a node refuses a tier it cannot run before it starts anything.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, TypeVar

import msgspec

from config import (
    ExLlamaV2BackendSettings,
    LlamaCppBackendSettings,
    OpenAIBackendSettings,
    RemoteBackendSettings,
    ScriptedBackendSettings,
)
from inference._backend import Backend
from inference._scripted import scripted_from_settings
from messages import ConfigError

if TYPE_CHECKING:
    from config import BackendSettings

S = TypeVar("S", bound=msgspec.Struct)

BACKEND_KEY: Final = "inference.tiers.backend"
DISTRIBUTION: Final = "actorfleet"


class Kind(msgspec.Struct, Generic[S], frozen=True, kw_only=True):
    """One kind of backend: the settings that choose it, and how it is built.

    Attributes:
        settings: Its settings class; the class's `kind` tag names it in TOML.
        build: Makes one worker's backend from the settings; None for a kind
            whose workers never run in this process.
        elsewhere: Why it cannot run in this process (when `build` is None).
        modules: Top-level modules it needs, looked for without importing them.
        extra: The package extra that installs `modules`.
        check: Checks the settings cheaply in the node's own process, before
            any worker starts (a model file that is missing or damaged),
            raising `ConfigError` with the key it is given.
    """

    settings: type[S]
    build: Callable[[S], Backend] | None
    elsewhere: str = ""
    modules: tuple[str, ...] = ()
    extra: str = ""
    check: Callable[[S, str], None] | None = None

    @property
    def name(self) -> str:
        """The `kind` that chooses it in a tier's `[backend]` table."""
        return str(self.settings.__struct_config__.tag)


def _openai(settings: OpenAIBackendSettings) -> Backend:
    from inference._openai import openai_from_settings  # noqa: PLC0415 - imported when chosen

    return openai_from_settings(settings)


def _exllamav2(settings: ExLlamaV2BackendSettings) -> Backend:
    from inference._exllamav2 import exllamav2_from_settings  # noqa: PLC0415 - the gpu extra

    return exllamav2_from_settings(settings)


def _llamacpp(settings: LlamaCppBackendSettings) -> Backend:
    from inference._llamacpp import llamacpp_from_settings  # noqa: PLC0415 - the cpu extra

    return llamacpp_from_settings(settings)


def _check_llamacpp(settings: LlamaCppBackendSettings, key: str) -> None:
    from inference._llamacpp import check_model_file  # noqa: PLC0415 - no engine imported

    check_model_file(settings.model_path, key=key)


def _by_settings(*kinds: Kind[Any]) -> Mapping[type[msgspec.Struct], Kind[Any]]:
    return {kind.settings: kind for kind in kinds}


KINDS: Final = _by_settings(
    Kind(settings=ScriptedBackendSettings, build=scripted_from_settings),
    Kind(settings=OpenAIBackendSettings, build=_openai),
    Kind(
        settings=ExLlamaV2BackendSettings,
        build=_exllamav2,
        modules=("torch", "exllamav2"),
        extra="gpu",
    ),
    Kind(
        settings=LlamaCppBackendSettings,
        build=_llamacpp,
        modules=("llama_cpp",),
        extra="cpu",
        check=_check_llamacpp,
    ),
    Kind(
        settings=RemoteBackendSettings,
        build=None,
        elsewhere="a remote tier is served by workers on other nodes, not in this process",
    ),
)


def check_available(settings: BackendSettings, *, key: str = BACKEND_KEY) -> None:
    """Fail now, naming `key`, if this process cannot run the backend `settings` choose.

    Nothing is imported or loaded: a backend that passes may still fail to
    start (no CUDA device visible, a model directory that is not one). A
    kind with a `check` runs it (the llamacpp kind reads its GGUF file's
    header and tensor table).

    Args:
        settings: A tier's `[backend]` table.
        key: Its key path, e.g. `inference.tiers[0].backend`.

    Raises:
        ConfigError: If its workers run elsewhere (`remote`), the extra
            that installs what it needs is missing, or its check fails.
    """
    _builder(settings, key)


def backend_from_settings(settings: BackendSettings, *, key: str = BACKEND_KEY) -> Backend:
    """One worker's backend, as a tier's `[backend]` table describes it, in this process.

    Args:
        settings: A tier's `[backend]` table.
        key: Its key path, named by a `ConfigError`.

    Raises:
        ConfigError: As `check_available` does, or when the backend cannot
            start here (e.g. no CUDA device is visible).
    """
    return _builder(settings, key)(settings)


def _builder(settings: BackendSettings, key: str) -> Callable[[Any], Backend]:
    kind = KINDS.get(type(settings))
    if kind is None:
        raise ConfigError(f"{key}.kind", f"no backend is registered for {type(settings).__name__}")
    if kind.build is None:
        raise ConfigError(f"{key}.kind", kind.elsewhere)
    missing = [name for name in kind.modules if importlib.util.find_spec(name) is None]
    if missing:
        reason = (
            f"the {kind.name} backend needs the '{kind.extra}' extra "
            f"(pip install '{DISTRIBUTION}[{kind.extra}]'): {' and '.join(missing)} not installed"
        )
        raise ConfigError(key, reason)
    if kind.check is not None:
        kind.check(settings, key)
    return kind.build
