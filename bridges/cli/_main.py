"""The `actorfleet` command."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
from collections.abc import Sequence
from importlib import metadata as distribution
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

import config
from bridges.cli._client import add_client_commands, default_url, send, status
from messages import ActorfleetError, ConfigError, StartFailed, Unavailable

if TYPE_CHECKING:
    from supervisors import Supervisor, SupervisorStatistics

EXIT_USAGE: Final = 2
_MODEL_TIERS: Final = ("large", "small")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="actorfleet", description="Run LLM agents as supervised actors."
    )
    parser.add_argument(
        "--version", action="version", version=f"actorfleet {distribution.version('actorfleet')}"
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a node until SIGTERM/SIGINT")
    run.add_argument(
        "agents",
        nargs="*",
        metavar="module:Class",
        help="serve these agent classes (one pool each) instead of the configured pools,"
        " over HTTP and NATS on the defaults (imported from --app-dir)",
    )
    run.add_argument("--config", help="TOML file (default: the embedded config/default.toml)")
    run.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop by itself after this many seconds (for smoke tests)",
    )
    run.add_argument(
        "--model",
        action="append",
        default=[],
        metavar="PATH.gguf",
        help="answer with this GGUF model (llamacpp, the cpu extra) instead of the configured "
        "tiers; give it twice, largest first, for a large and a small tier",
    )
    run.add_argument("--log-level", default="INFO")
    run.add_argument(
        "--app-dir",
        default=".",
        help="where agent modules ('module:Class' in the config) are imported from, before "
        "the installed packages (default: the current directory, as uvicorn's)",
    )
    worker = commands.add_parser(
        "worker", help="serve one model tier on NATS af.inf.<tier> until SIGTERM/SIGINT"
    )
    worker.add_argument("--tier", required=True, help="the tier of [inference] to serve")
    worker.add_argument("--config", help="TOML file (default: the embedded config/default.toml)")
    # A node passes the settings it runs with, whatever their source.
    worker.add_argument("--settings-json", help=argparse.SUPPRESS)
    worker.add_argument("--nats", help="NATS server URL (default: nats.url)")
    worker.add_argument("--log-level", default="INFO")
    show = commands.add_parser("config", help="print the effective configuration as JSON")
    show.add_argument("--config", help="TOML file over the embedded config/default.toml")
    show.add_argument(
        "--origins",
        action="store_true",
        help="print each key with its value and where it came from (default, file, env)",
    )
    add_client_commands(commands)
    return parser


def _show_config(path: str | None, *, origins: bool) -> int:
    settings, sources = config.load_with_origins(path)
    shown = config.shown(settings)
    if not origins:
        print(msgspec.json.format(msgspec.json.encode(shown).decode()))
        return 0
    for key in sorted(sources):
        value: object = shown
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        print(f"{key} = {msgspec.json.encode(value).decode()}  # {sources[key]}")
    return 0


def _import_from(app_dir: str) -> None:
    """Let a node import its agent modules from `app_dir` (uvicorn's `--app-dir`)."""
    path = str(Path(app_dir).resolve())
    if path not in sys.path:
        sys.path.insert(0, path)


def _describe(settings: config.Settings, tree: SupervisorStatistics, types: list[str]) -> None:
    """Where the node serves, and what answers for the model."""
    from bridges.nats._embedded import LOG_FILE, embedded_store  # noqa: PLC0415 - loaded when the command runs (a quick --help)
    from bridges.node._edges import EMBEDDED_CHILD  # noqa: PLC0415 - loaded when the command runs (a quick --help)

    http = _child_detail(tree, "http")
    if http is not None:
        # "serving <url>" or "serving <url>, health on <url>"
        urls = [part.split()[-1] for part in http.split(", health on ")]
        api, health = urls[0], urls[-1]
        paths = "{" + ",".join(types) + "}" if len(types) > 1 else "".join(types)
        print(f"  API      POST {api}/v1/agents/{paths}")
        print(f"  OpenAI   {api}/v1/chat/completions  (/v1/completions, /v1/models)")
        print(f"  OpenAPI  {api}/schema/openapi.json  (its page: {api}/docs)")
        print(f"  AsyncAPI {api}/asyncapi.json  (the NATS subjects)")
        print(f"  UI       {api}/dashboard  (the live dashboard)")
        print(f"  health   {health}/healthz  (/livez, /readyz)")
        print(f"  metrics  {health}/metrics")
    store = embedded_store(settings.nats)
    if store is not None and _has_child(tree, EMBEDDED_CHILD):
        print(f"  NATS     embedded nats-server, its log in {store / LOG_FILE}")
    elif settings.nats.enabled:
        print("  NATS     a server already answered at the URL: this node started none")
    for child_id, label in (("nats", "NATS"), ("state", "state"), ("audit", "audit")):
        detail = _child_detail(tree, child_id)
        if detail is not None:
            print(f"  {label:<8} {detail}")
    if settings.state.backend == "memory":
        print("  state    in this process's memory (lost when it stops)")
    for tier in settings.inference.tiers:
        backend = tier.backend
        kind = backend.__struct_config__.tag
        model = getattr(backend, "model_path", "") or backend.model
        note = " (rule-driven replies, no model)" if kind == "scripted" else ""
        print(f"  backend  tier {tier.name}: {kind} {model}{note}")


def _has_child(tree: SupervisorStatistics, child_id: str) -> bool:
    return any(
        child.id == child_id
        or (child.supervisor is not None and _has_child(child.supervisor, child_id))
        for child in tree.children
    )


def _child_detail(tree: SupervisorStatistics, child_id: str) -> str | None:
    for child in tree.children:
        if child.supervisor is not None:
            found = _child_detail(child.supervisor, child_id)
            if found is not None:
                return found
        elif child.id == child_id and child.detail:
            return child.detail
    return None


def with_agents(settings: config.Settings, paths: Sequence[str]) -> config.Settings:
    """`settings` whose pools are one of each agent class named (`module:Class`).

    Raises:
        ConfigError: If a name is not `module:Class`.
    """
    try:
        pools = [msgspec.convert({"agent": path}, config.PoolSettings) for path in paths]
    except msgspec.ValidationError as exc:
        msg = f"an agent is named module:Class, as myagents:GreeterAgent ({exc})"
        raise ConfigError("run", msg) from exc
    return msgspec.structs.replace(settings, pools=pools)


def with_models(settings: config.Settings, paths: Sequence[str]) -> config.Settings:
    """`settings` with its tiers replaced by one llamacpp tier per GGUF file, largest first.

    The tiers are named `large` and `small` (then `tier3`, ...), so the
    reference agents, which prefer `large`, degrade to the second model
    under load. Each keeps the settings of the configured tier of its
    name, if there is one, but for its backend.

    Raises:
        ConfigError: If a file is not a readable GGUF file.
    """
    from inference import check_available  # noqa: PLC0415 - loaded when the command runs (a quick --help)

    configured = {tier.name: tier for tier in settings.inference.tiers}
    tiers = []
    for index, path in enumerate(paths):
        name = _MODEL_TIERS[index] if index < len(_MODEL_TIERS) else f"tier{index + 1}"
        backend = config.LlamaCppBackendSettings(model_path=str(Path(path).resolve()))
        try:
            check_available(backend)
        except ConfigError as exc:
            raise ConfigError("--model", exc.reason) from exc
        tier = configured.get(name)
        tiers.append(
            config.TierSettings(name=name, backend=backend)
            if tier is None
            else msgspec.structs.replace(tier, backend=backend, process=None, gpus=[])
        )
    inference = msgspec.structs.replace(settings.inference, tiers=tiers, default_tier="")
    return msgspec.structs.replace(settings, inference=inference)


def _run(args: argparse.Namespace) -> int:
    from bridges.cli._client import print_tree  # noqa: PLC0415 - loaded when the command runs (a quick --help)
    from bridges.node._build import build_node, import_agent  # noqa: PLC0415 - loaded when the command runs (a quick --help)
    from supervisors import pin_cpus  # noqa: PLC0415 - loaded when the command runs (a quick --help)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    settings = config.load(args.config)
    if args.agents:
        settings = with_agents(settings, args.agents)
    if args.model:
        settings = with_models(settings, args.model)
    if settings.node.cpus:
        print(f"pinned to CPUs {sorted(pin_cpus(settings.node.cpus))}")
    node = build_node(settings)

    def ready(root: Supervisor) -> None:
        types = list(
            dict.fromkeys(import_agent(p.agent, key="").agent_type for p in settings.pools)
        )
        tree = root.statistics()
        served = ", ".join(types) or "none"
        print(f"actorfleet node {node.runtime.node} running; agent types: {served}")
        _describe(settings, tree, types)
        print_tree(tree)
        print("ready", flush=True)
        if args.duration is not None:
            timer = threading.Timer(args.duration, node.stop)
            timer.daemon = True
            timer.start()

    return node.run(on_ready=ready)


def _worker(args: argparse.Namespace) -> int:
    from actors import tracing_from_settings  # noqa: PLC0415 - loaded when the command runs (a quick --help)
    from bridges._loop import run_async  # noqa: PLC0415 - loaded when the command runs (a quick --help)
    from bridges.workers._worker import serve_worker  # noqa: PLC0415 - loaded when the command runs (a quick --help)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.settings_json:
        settings = config.decode(msgspec.json.decode(args.settings_json))
    else:
        settings = config.load(args.config)
    tier = next((t for t in settings.inference.tiers if t.name == args.tier), None)
    if tier is None:
        names = [t.name for t in settings.inference.tiers]
        raise ConfigError("--tier", f"{args.tier!r} is not one of the tiers {names}")
    url = args.nats or settings.nats.url
    try:
        tracing = tracing_from_settings(settings.telemetry, node=f"worker-{tier.name}")
        run_async(
            serve_worker(
                tier,
                settings.nats,
                url,
                on_ready=lambda _w: print("ready", flush=True),
                tracing=tracing,
            )
        )
    except Unavailable as exc:
        print(f"actorfleet worker: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `actorfleet` console script."""
    try:
        return _main(argv)
    except BrokenPipeError:
        # The reader went away (`actorfleet status | head`): nothing more to say.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


def _main(argv: Sequence[str] | None) -> int:  # noqa: PLR0911 - one exit per command
    args = _parser().parse_args(argv)
    try:
        if args.command == "config":
            return _show_config(args.config, origins=args.origins)
        if args.command == "worker":
            return _worker(args)
        if args.command in {"status", "send"}:
            url = args.url or default_url(config.load(args.config))
            return status(url) if args.command == "status" else send(args, url)
        if args.command == "audit":
            from bridges.cli._audit import audit  # noqa: PLC0415 - loaded when the command runs (a quick --help)

            return audit(args, config.load(args.config))
        _import_from(args.app_dir)  # only `run` is left
        return _run(args)
    except StartFailed as exc:
        print(f"actorfleet: {exc}", file=sys.stderr)
        return 1
    except ActorfleetError as exc:
        print(f"actorfleet: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
