"""The deployment run without Kubernetes: the chart's three servers, the API node's config.

Three `nats-server`s are configured as deploy/nats/values.yaml configures the
chart's (a JetStream cluster, the af-node and af-admin users with their
permissions), and a node runs the ConfigMap's node.toml against them, with
only its addresses moved to free loopback ports.
"""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client
from prometheus_client.parser import text_string_to_metric_families

from bridges import build_node, free_port
from bridges.nats._auth import ADMIN_INBOX, ADMIN_USER
from bridges.nats._embedded import LOOPBACK, find_nats_server, wait_listening
from tests.conftest import WAIT
from tests.deploy.test_deploy import (
    API,
    DEPLOY,
    UNQUOTED_VARIABLE,
    _container,
    _documents,
    _manifest,
    _secret_refs,
    _secret_template,
    _settings,
)

CLUSTER_READY: Final = 30.0
PROBE_STREAM: Final = "AF_DEPLOY_PROBE"


def _chart_values() -> dict[str, Any]:
    [values] = _documents(DEPLOY / "nats" / "values.yaml")
    return values


class ChartCluster:
    """The chart's servers on loopback: cluster, JetStream and users as its values say.

    Args:
        directory: Where the servers keep their configuration and JetStream data.
        passwords: Each user's password, by the environment variable the values name.
    """

    def __init__(self, directory: Path, passwords: dict[str, str]) -> None:
        values = _chart_values()
        self.replicas = values["config"]["cluster"]["replicas"]
        users = []
        for user in values["config"]["merge"]["authorization"]["users"]:
            match = UNQUOTED_VARIABLE.match(user["password"])
            assert match is not None, user["user"]
            users.append({**user, "password": passwords[match.group("name")]})
        self.config = directory / "nats.conf"
        # nats-server's configuration format reads JSON.
        self.config.write_text(json.dumps({"authorization": {"users": users}}), encoding="utf-8")
        self.directory = directory
        self.ports = [(free_port(), free_port()) for _ in range(self.replicas)]
        self.processes: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """Every server's client URL, as a node's nats.url lists a cluster."""
        return ",".join(f"nats://{LOOPBACK}:{client}" for client, _ in self.ports)

    def start(self) -> None:
        """Start every server; return once each accepts clients."""
        for index, (client, route) in enumerate(self.ports):
            routes = [f"nats://{LOOPBACK}:{r}" for _, r in self.ports if r != route]
            argv = [
                find_nats_server(),
                "-a",
                LOOPBACK,
                "-p",
                str(client),
                "--server_name",
                f"nats-{index}",
                "-js",
                "-sd",
                str(self.directory / f"js-{index}"),
                "--cluster_name",
                "nats",
                "--cluster",
                f"nats://{LOOPBACK}:{route}",
                "--routes",
                ",".join(routes),
                "-c",
                str(self.config),
            ]
            self.processes.append(
                subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        for process, (client, _) in zip(self.processes, self.ports, strict=True):
            wait_listening(LOOPBACK, client, alive=functools.partial(_alive, process))

    def stop(self) -> None:
        """Stop every server that runs."""
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(WAIT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _alive(process: subprocess.Popen[bytes]) -> bool:
    return process.poll() is None


async def _admin(url: str, password: str) -> Client:
    return await nats.connect(
        url.split(","),
        user=ADMIN_USER,
        password=password,
        inbox_prefix=ADMIN_INBOX.encode(),
        connect_timeout=1,
        allow_reconnect=False,
    )


def _places_replicated_streams(url: str, password: str, replicas: int) -> bool:
    """Whether the cluster has its JetStream meta leader and every peer (an R3 stream fits)."""

    async def probe() -> bool:
        nc = await _admin(url, password)
        js = nc.jetstream()
        try:
            await js.add_stream(
                name=PROBE_STREAM, subjects=["af-deploy-probe"], num_replicas=replicas
            )
            await js.delete_stream(PROBE_STREAM)
        except (nats.errors.Error, TimeoutError):
            return False
        finally:
            await nc.close()
        return True

    return asyncio.run(probe())


def _stream_replicas(url: str, password: str) -> dict[str, int]:
    async def read() -> dict[str, int]:
        nc = await _admin(url, password)
        try:
            infos = await nc.jetstream().streams_info()
        finally:
            await nc.close()
        return {info.config.name or "": info.config.num_replicas or 0 for info in infos}

    return asyncio.run(read())


@pytest.fixture
def passwords() -> dict[str, str]:
    """A password for each user of the chart, by the server's environment variable."""
    env = _chart_values()["container"]["env"]
    return {name: f"af{name.lower()}" for name, value in env.items() if isinstance(value, dict)}


@pytest.fixture
def cluster(tmp_path: Path, passwords: dict[str, str]) -> Iterator[ChartCluster]:
    servers = ChartCluster(tmp_path, passwords)
    admin = passwords[_secret_env_of_user(ADMIN_USER)]
    try:
        servers.start()
        limit = time.monotonic() + CLUSTER_READY
        # A fresh cluster elects its meta leader within seconds and announces
        # nothing a client could wait on: placing a probe stream is retried.
        while not _places_replicated_streams(servers.url, admin, servers.replicas):
            assert time.monotonic() < limit, "the JetStream cluster did not form"
            time.sleep(0.1)  # between placement attempts
        yield servers
    finally:
        servers.stop()


def _secret_env_of_user(user: str) -> str:
    """The server's environment variable that holds `user`'s password."""
    for entry in _chart_values()["config"]["merge"]["authorization"]["users"]:
        match = UNQUOTED_VARIABLE.match(entry["password"])
        if entry["user"] == user and match is not None:
            return match.group("name")
    pytest.fail(f"the chart's values have no user {user}")


@pytest.mark.slow
def test_the_api_nodes_config_serves_on_the_charts_cluster_with_r3_streams(
    cluster: ChartCluster,
    passwords: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = _settings(API, tmp_path)
    http = msgspec.structs.replace(
        settings.http, host=LOOPBACK, port=free_port(), health_port=free_port()
    )
    settings = msgspec.structs.replace(
        settings, http=http, nats=msgspec.structs.replace(settings.nats, url=cluster.url)
    )
    # The pod's environment: its Secret-backed variables, with the template's
    # placeholders and the cluster's node password.
    template = _secret_template()
    for name, ref in _secret_refs(_container(API)["env"]).items():
        monkeypatch.setenv(name, template[ref])
    monkeypatch.setenv(
        settings.nats.password_env, passwords[_secret_env_of_user(settings.nats.user)]
    )
    node = build_node(settings)
    node.start()
    try:
        with httpx.Client(base_url=f"http://{LOOPBACK}:{http.health_port}", timeout=WAIT) as client:
            assert client.get("/livez").status_code == 200
            ready = client.get("/readyz")
            assert (ready.status_code, ready.text.strip()) == (200, "ready")
            families = {f.name for f in text_string_to_metric_families(client.get("/metrics").text)}
        [metric] = _manifest("HorizontalPodAutoscaler", API)["spec"]["metrics"]
        assert metric["pods"]["metric"]["name"] in families
        admin = passwords[_secret_env_of_user(ADMIN_USER)]
        bucket = settings.state.bucket
        streams = [
            settings.events.stream,
            settings.events.dead_letter_stream,
            settings.state.audit_stream,
            f"KV_{bucket}",
            f"KV_{bucket}_KEYS",
        ]
        replicas = _stream_replicas(cluster.url, admin)
        assert {name: replicas.get(name) for name in streams} == dict.fromkeys(
            streams, cluster.replicas
        )
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0
