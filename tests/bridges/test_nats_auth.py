"""NATS authentication, the node user's permissions, and TLS: against real servers."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import logging
import os
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import nats
import nats.aio.client
import nats.errors
import nats.js.errors
import nkeys
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from nats.js.api import RePublish, StreamConfig, StreamSource

from actors import DataKeys
from bridges import IoLoop, NatsServer, build_node, embedded_server, free_port
from bridges._loop import run_async
from bridges.nats._auth import (
    ADMIN_USER,
    NODE_USER,
    EmbeddedUsers,
    JetStreamNames,
    connect_options,
    data_keys_bucket,
)
from bridges.nats._embedded import ServerTls, find_nats_server, port_answers
from bridges.nats._streams import hazards
from bridges.stores import KvStore, LoopStore
from bridges.stores._audit import JetStreamAudit
from config import NatsSettings, StateSettings, decode
from messages import (
    ConfigError,
    GenerateRequest,
    Metadata,
    Ping,
    Pong,
    Unavailable,
    UserDataErased,
    encode,
    new_message_id,
)
from tests.conftest import WAIT

DENIED = 0.05  # a refused JetStream request gets no reply: it times out this soon
AUDIT = "AF_AUDIT"
RECORDS = 3
UNSET = "AF_NO_SUCH_PASSWORD"  # an environment variable that no test sets


def _as(server: NatsServer, user: str) -> NatsSettings:
    assert server.users is not None
    return server.users.settings_for(NatsSettings(url=server.url, embed=False), user)


async def _client(server: NatsServer, user: str, errors: list[str] | None = None) -> Any:
    async def error_cb(error: Exception) -> None:
        if errors is not None:
            errors.append(str(error))

    options = connect_options(_as(server, user))
    return await nats.connect(
        server.url, allow_reconnect=False, connect_timeout=1, error_cb=error_cb, **options
    )


async def _audit_with_records(server: NatsServer) -> None:
    admin = await _client(server, ADMIN_USER)
    js = admin.jetstream()
    await js.add_stream(
        StreamConfig(name=AUDIT, subjects=["af.audit.>"], deny_delete=True, deny_purge=True)
    )
    for n in range(RECORDS):
        await js.publish("af.audit.generation", f"record {n}".encode())
    await admin.close()


async def _records(server: NatsServer) -> int:
    admin = await _client(server, ADMIN_USER)
    info = await admin.jetstream().stream_info(AUDIT)
    await admin.close()
    return int(info.state.messages)


async def test_a_client_without_credentials_is_refused(auth_nats_server: NatsServer) -> None:
    assert "Authorization" in await _refused(auth_nats_server.url)


async def _ignore(_error: Exception) -> None:
    return None


def _violated(errors: list[str], subject: str) -> bool:
    """Whether the server refused a publish to `subject` (nats-py lowercases its text)."""
    return any("permissions violation" in e and subject.lower() in e for e in errors)


async def test_the_node_user_cannot_change_the_audit_stream_and_its_records_stay(
    auth_nats_server: NatsServer,
) -> None:
    await _audit_with_records(auth_nats_server)
    errors: list[str] = []
    node = await _client(auth_nats_server, NODE_USER, errors)
    js = node.jetstream(timeout=DENIED)
    shrunk = StreamConfig(
        name=AUDIT, subjects=["af.audit.>"], deny_delete=True, deny_purge=True, max_msgs=1
    )
    with pytest.raises(nats.errors.TimeoutError):
        await js.update_stream(shrunk)
    with pytest.raises(nats.errors.TimeoutError):
        await js.delete_stream(AUDIT)
    await node.close()
    assert _violated(errors, "$JS.API.STREAM.UPDATE.AF_AUDIT")
    assert _violated(errors, "$JS.API.STREAM.DELETE.AF_AUDIT")
    assert await _records(auth_nats_server) == RECORDS


async def test_the_node_user_appends_to_the_audit_log_but_cannot_read_it(
    auth_nats_server: NatsServer,
) -> None:
    await _audit_with_records(auth_nats_server)
    errors: list[str] = []
    node = await _client(auth_nats_server, NODE_USER, errors)
    js = node.jetstream(timeout=DENIED)
    await js.publish("af.audit.generation", b"one more")
    with pytest.raises(nats.errors.TimeoutError):
        await js.get_msg(AUDIT, seq=1)
    with pytest.raises(nats.errors.TimeoutError):
        await js.subscribe("af.audit.>", stream=AUDIT, ordered_consumer=True)
    await node.close()
    assert _violated(errors, f"$JS.API.STREAM.MSG.GET.{AUDIT}")
    assert _violated(errors, f"$JS.API.CONSUMER.CREATE.{AUDIT}")
    assert await _records(auth_nats_server) == RECORDS + 1


def _keys_store(io: IoLoop, server: NatsServer, user: str, bucket: str) -> KvStore:
    settings = StateSettings(backend="kv", bucket=bucket, timeout=1.0)
    store = KvStore.open(server.url, settings, _as(server, user), name=user)
    return io.run(store, timeout=WAIT)


def test_the_node_user_keeps_data_keys_by_name_but_cannot_list_them(
    auth_nats_server: NatsServer, io: IoLoop
) -> None:
    store = _keys_store(io, auth_nats_server, NODE_USER, "AF_STATE")
    try:
        keys = DataKeys(LoopStore(io, store, timeout=WAIT))
        key_id, secret = keys.current("jane")
        assert keys.secret(key_id) == secret  # one key, by its name
        assert keys.ids("jane") == [key_id]
        assert keys.destroy("jane") == [key_id]  # erasure needs no listing
        assert keys.secret(key_id) is None
        keys.current("joe")
    finally:
        io.run(store.close(), timeout=WAIT)
    errors: list[str] = []

    async def list_them() -> None:
        node = await _client(auth_nats_server, NODE_USER, errors)
        js = node.jetstream(timeout=DENIED)
        bucket = data_keys_bucket("AF_STATE")
        stream = f"KV_{bucket}"
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(stream, subjects_filter=">")
        with pytest.raises(nats.errors.TimeoutError):
            await js.get_msg(stream, seq=1, direct=True)
        with pytest.raises(nats.errors.TimeoutError):
            await js.subscribe(f"$KV.{bucket}.>", stream=stream, ordered_consumer=True)
        await node.close()

    io.run(list_them(), timeout=WAIT)
    stream = f"KV_{data_keys_bucket('AF_STATE')}"
    assert _violated(errors, f"$JS.API.STREAM.INFO.{stream}")
    assert _violated(errors, f"$JS.API.DIRECT.GET.{stream}")
    assert _violated(errors, f"$JS.API.CONSUMER.CREATE.{stream}")


def test_the_admin_updates_the_audit_stream_and_lists_the_data_keys(
    auth_nats_server: NatsServer, io: IoLoop
) -> None:
    node_store = _keys_store(io, auth_nats_server, NODE_USER, "AF_STATE")
    key_id, _ = DataKeys(LoopStore(io, node_store, timeout=WAIT)).current("jane")
    io.run(node_store.close(), timeout=WAIT)

    async def as_admin() -> tuple[int, list[str]]:
        await _audit_with_records(auth_nats_server)
        admin = await _client(auth_nats_server, ADMIN_USER)
        js = admin.jetstream()
        info = await js.update_stream(
            StreamConfig(
                name=AUDIT, subjects=["af.audit.>"], deny_delete=True, deny_purge=True, max_msgs=-1
            )
        )
        bucket = data_keys_bucket("AF_STATE")
        listed = await js.stream_info(f"KV_{bucket}", subjects_filter=">")
        await admin.close()
        return int(info.state.messages), sorted(listed.state.subjects or {})

    messages, subjects = io.run(as_admin(), timeout=WAIT)
    assert messages == RECORDS
    assert f"$KV.{data_keys_bucket('AF_STATE')}.auditkey.id.{key_id}" in subjects


def test_data_keys_an_earlier_version_kept_in_the_state_bucket_move_to_their_own(
    nats_server: NatsServer, io: IoLoop
) -> None:
    settings = StateSettings(backend="kv", bucket="OLD", timeout=1.0)
    nats_settings = NatsSettings(url=nats_server.url, embed=False)
    legacy = b"\x00" * 32

    async def write_as_before() -> None:
        nc = await nats.connect(nats_server.url)
        kv = await nc.jetstream().create_key_value(bucket="OLD", history=1, direct=True)
        # As KvStore writes values: with their expiry (0: none).
        await kv.put("auditkey.id.k1", msgspec.msgpack.encode((0.0, legacy)))
        await kv.put("auditkey.index.jane.k1", msgspec.msgpack.encode((0.0, b"")))
        await nc.close()

    io.run(write_as_before(), timeout=WAIT)
    store = io.run(KvStore.open(nats_server.url, settings, nats_settings, name="t"), timeout=WAIT)
    try:
        state = LoopStore(io, store, timeout=WAIT)
        keys = DataKeys(state)
        assert keys.secret("k1") == legacy
        assert keys.ids("jane") == ["k1"]
        assert keys.destroy("jane") == ["k1"]
        assert keys.secret("k1") is None
        assert state.scan("auditkey.index.jane") == []
    finally:
        io.run(store.close(), timeout=WAIT)


def test_the_embedded_server_generates_its_users_once_and_keeps_them(tmp_path: Path) -> None:
    settings = NatsSettings(url=f"nats://127.0.0.1:{free_port()}", store_dir=str(tmp_path))
    first = embedded_server(settings)
    assert first is not None
    assert first.users is not None
    password = first.users.password(NODE_USER)
    again = embedded_server(settings)
    assert again is not None
    assert again.users is not None
    assert again.users.password(NODE_USER) == password
    assert again.users.password(ADMIN_USER) != password
    directory = tmp_path / "auth"
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for user in (NODE_USER, ADMIN_USER):
        assert stat.S_IMODE(first.users.password_file(user).stat().st_mode) == 0o600
    assert "-c" in again.argv()
    assert stat.S_IMODE((directory / "server.conf").stat().st_mode) == 0o600
    assert password not in repr(settings) + repr(again.users)
    open_one = embedded_server(msgspec.structs.replace(settings, embed_auth=False))
    assert open_one is not None
    assert open_one.users is None


def test_bad_credential_and_tls_settings_fail_at_start_naming_the_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("not a certificate")
    cases = {
        "nats.tls_key_file": {"tls_cert_file": str(cert)},
        "nats.tls_cert_file": {"tls_key_file": str(cert)},
        "nats.tls_ca_file": {"tls_ca_file": str(tmp_path / "missing.pem")},
        # A nats:// URL would send the credentials in the clear to a server that asks no TLS.
        "nats.url": {"tls_ca_file": str(cert), "url": "nats://127.0.0.1:4222"},
        "nats.user": {"user": "someone"},
        "nats.password_env": {"password_env": UNSET},
        "nats.token_env": {"token_env": "T", "user": "u", "password_env": "P"},
    }
    for key, nats_settings in cases.items():
        with pytest.raises(ConfigError) as raised:
            decode({"nats": nats_settings})
        assert raised.value.path == key
    with pytest.raises(ConfigError) as raised:
        connect_options(NatsSettings(user="u", password_env=UNSET), env={})
    assert raised.value.path == "nats.password_env"
    with pytest.raises(ConfigError) as raised:
        connect_options(NatsSettings(url="tls://127.0.0.1:4222", tls_ca_file=str(cert)))
    assert raised.value.path == "nats.tls_ca_file"


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _certificate(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, signer = issuer if issuer is not None else (subject, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if usage == ExtendedKeyUsageOID.SERVER_AUTH:
        address = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
        builder = builder.add_extension(x509.SubjectAlternativeName([address]), critical=False)
    return builder.sign(signer, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all made here."""
    directory = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("actorfleet test CA", ca_key, None)
    files: dict[str, bytes] = {"ca.pem": ca.public_bytes(serialization.Encoding.PEM)}
    for role, usage in (
        ("server", ExtendedKeyUsageOID.SERVER_AUTH),
        ("client", ExtendedKeyUsageOID.CLIENT_AUTH),
    ):
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _certificate(f"actorfleet {role}", key, (ca.subject, ca_key), usage=usage)
        files[f"{role}.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        files[f"{role}-key.pem"] = _key_pem(key)
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return Pki(
        ca=directory / "ca.pem",
        server_cert=directory / "server.pem",
        server_key=directory / "server-key.pem",
        client_cert=directory / "client.pem",
        client_key=directory / "client-key.pem",
    )


@pytest.fixture
def mtls_server(pki: Pki, tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server that takes TLS clients with a certificate from the test CA, and credentials."""
    tls = ServerTls(
        cert_file=str(pki.server_cert), key_file=str(pki.server_key), ca_file=str(pki.ca)
    )
    users = EmbeddedUsers(tmp_path / "auth")
    server = NatsServer(store_dir=tmp_path / "js", users=users, tls=tls).start()
    try:
        yield server
    finally:
        server.stop()


def _mtls_settings(server: NatsServer, pki: Pki, **extra: object) -> dict[str, Any]:
    assert server.users is not None
    return {
        "url": server.url,
        "embed": False,
        "user": NODE_USER,
        "password_file": str(server.users.password_file(NODE_USER)),
        "tls_ca_file": str(pki.ca),
        "tls_cert_file": str(pki.client_cert),
        "tls_key_file": str(pki.client_key),
        **extra,
    }


async def test_a_client_without_a_certificate_is_refused_by_the_mtls_server(
    mtls_server: NatsServer, pki: Pki
) -> None:
    no_cert = ssl.create_default_context(cafile=str(pki.ca))
    assert mtls_server.users is not None
    password = mtls_server.users.password(NODE_USER)
    refused = await _refused(mtls_server.url, tls=no_cert, user=NODE_USER, password=password)
    assert refused != "connected"
    settings = decode({"nats": _mtls_settings(mtls_server, pki)}).nats
    nc = await nats.connect(
        mtls_server.url, allow_reconnect=False, connect_timeout=1, **connect_options(settings)
    )
    assert nc.is_connected
    await nc.close()


@pytest.mark.slow
def test_a_node_with_the_right_credentials_works_end_to_end_over_mutual_tls(
    mtls_server: NatsServer, pki: Pki
) -> None:
    nats_settings = _mtls_settings(mtls_server, pki, connect_timeout=2.0)
    node = build_node(
        decode(
            {
                "node": {"name": "n1"},
                "nats": nats_settings,
                "pools": [{"agent": "actors:PingAgent", "size": 1}],
            }
        )
    )
    caller = build_node(decode({"node": {"name": "caller"}, "nats": nats_settings}))
    node.start()
    try:
        caller.start()
        reply = caller.runtime.ref("ping").ask(Ping(payload="over mTLS"), timeout=WAIT)
        assert isinstance(reply, Pong)
        assert reply.payload == "over mTLS"
    finally:
        for n in (caller, node):
            n.stop()
            n.run(handle_signals=False)


@pytest.mark.slow
def test_credentials_never_show_in_health_details_or_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"nats://127.0.0.1:{free_port()}"
    settings = decode(
        {
            "node": {"name": "n1"},
            "nats": {"url": url, "store_dir": str(tmp_path / "js")},
            "state": {"backend": "kv", "audit_stream": AUDIT},
            "http": {"enabled": True, "port": 0},
            "pools": [{"agent": "actors:PingAgent", "size": 1}],
        }
    )
    node = build_node(settings)
    node.start()
    try:
        users = EmbeddedUsers(tmp_path / "js" / "auth")
        secrets = [users.password(NODE_USER), users.password(ADMIN_USER)]
        assert node.runtime.ref("ping").ask(Ping(payload="x"), timeout=WAIT).payload == "x"
        refused = asyncio.run(_refused(url))
        assert "Authorization" in refused
        shown = repr(node.root.statistics()) + repr(settings) + _healthz(node)
        assert str(users.password_file(NODE_USER)) in caplog.text  # how other nodes join
    finally:
        node.stop()
        node.run(handle_signals=False)
    for secret in secrets:
        assert secret not in shown
        assert secret not in caplog.text
        assert all(secret not in str(record.args) for record in caplog.records)


async def _refused(url: str, **options: Any) -> str:
    """Why the server refuses a client with `options`, or "connected"."""
    nc = nats.aio.client.Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=1, error_cb=_ignore, **options)
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        return str(exc) or type(exc).__name__
    finally:
        await nc.close()
    return "connected"


def _healthz(node: Any) -> str:
    [http] = [c for c in _children(node.root.statistics()) if c.id == "http"]
    address = http.detail.removeprefix("serving ").split(",")[0]
    response = httpx.get(f"{address}/healthz", timeout=WAIT)
    assert "nats:connection" in response.text
    return response.text


def _children(stats: Any) -> Iterator[Any]:
    for child in stats.children:
        yield child
        if child.supervisor is not None:
            yield from _children(child.supervisor)


@pytest.mark.slow
def test_a_model_worker_process_joins_as_the_node_user_and_its_command_line_holds_no_secret(
    tmp_path: Path,
) -> None:
    tier = {
        "name": "large",
        "process": True,
        "backend": {"kind": "scripted", "model": "scripted-large", "default_reply": "worked"},
    }
    url = f"nats://127.0.0.1:{free_port()}"
    settings = {
        "node": {"name": "n1"},
        "nats": {"url": url, "store_dir": str(tmp_path / "js")},
        "inference": {"tiers": [tier]},
    }
    node = build_node(decode(settings))  # generates the users' passwords
    users = EmbeddedUsers(tmp_path / "js" / "auth")
    ready = asyncio.Event()
    io = IoLoop(name="worker-ready").start()

    async def listen() -> Any:
        options = connect_options(users.settings_for(NatsSettings(url=url, embed=False)))
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.05, **options)

        async def heard(_msg: Any) -> None:
            ready.set()

        await nc.subscribe("af.inf.large.ready", cb=heard)
        await nc.flush()
        return nc

    # Listening before the worker starts: nats-py retries a first connect until the server is up.
    listening = io.submit(listen())
    node.start()
    listener = listening.result(timeout=WAIT)
    try:
        io.run(asyncio.wait_for(ready.wait(), WAIT), timeout=WAIT + 1)
        pool = node.runtime.inference
        assert pool is not None
        meta = Metadata(id=new_message_id(), deadline=time.time() + WAIT)
        result = pool.generate(GenerateRequest(prompt="hello", max_tokens=8), meta)
        assert result.text == "worked"
        secret = users.password(NODE_USER)
        pids = [c.pid for c in _children(node.root.statistics()) if c.pid is not None]
        assert len(pids) == 2  # nats-server and the worker
        for pid in pids:
            assert secret.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()
    finally:
        io.run(listener.close(), timeout=WAIT)
        io.stop()
        node.stop()
        node.run(handle_signals=False)


@pytest.mark.slow
def test_a_node_user_uses_an_event_stream_it_may_not_update_as_it_is(
    auth_nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    async def made_by_the_admin() -> None:
        admin = await _client(auth_nats_server, ADMIN_USER)
        try:
            await admin.jetstream().add_stream(
                StreamConfig(name="AF_EVENTS", subjects=["af.evt.>"], duplicate_window=60.0)
            )
        finally:
            await admin.close()

    run_async(made_by_the_admin())
    node_settings = msgspec.to_builtins(_as(auth_nats_server, NODE_USER))
    node = build_node(
        decode(
            {
                "node": {"name": "n1"},
                "nats": node_settings,
                "events": {"duplicate_window": 5.0},
                "pools": [{"agent": "actors:PingAgent", "size": 1}],
            }
        )
    )
    node.start()
    try:
        reply = node.runtime.ref("ping").ask(Ping(payload="still up"), timeout=WAIT)
        assert isinstance(reply, Pong)
    finally:
        node.stop()
        assert node.run(handle_signals=False) == 0
    assert any("AF_EVENTS exists with other settings" in r.getMessage() for r in caplog.records)


@pytest.fixture
def nkey_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A nats-server whose one user is an NKey; its URL and the user's seed file."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    seed_file.chmod(0o600)
    port = free_port()
    conf = tmp_path / "server.conf"
    conf.write_text(f'port: {port}\nauthorization {{ users = [ {{ nkey: "{public}" }} ] }}\n')
    proc = subprocess.Popen(
        [find_nats_server(), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + WAIT
        while not port_answers("127.0.0.1", port):
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.01)
        yield f"nats://127.0.0.1:{port}", seed_file
    finally:
        proc.terminate()
        proc.wait(WAIT)


async def test_an_nkey_seed_file_authenticates_and_another_seed_does_not(
    nkey_server: tuple[str, Path], tmp_path: Path
) -> None:
    url, seed_file = nkey_server
    settings = NatsSettings(url=url, embed=False, nkey_seed_file=str(seed_file))
    nc = await nats.connect(url, allow_reconnect=False, **connect_options(settings))
    assert nc.is_connected
    await nc.close()
    stranger = tmp_path / "stranger.nk"
    stranger.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    other = NatsSettings(url=url, embed=False, nkey_seed_file=str(stranger))
    assert "uthorization" in await _refused(url, **connect_options(other))


def test_a_roll_up_header_cannot_wipe_the_data_keys_the_node_made(
    auth_nats_server: NatsServer, io: IoLoop
) -> None:
    store = _keys_store(io, auth_nats_server, NODE_USER, "AF_STATE")
    try:
        keys = DataKeys(LoopStore(io, store, timeout=WAIT))
        kept = {user: keys.current(user) for user in ("jane", "joe")}
    finally:
        io.run(store.close(), timeout=WAIT)

    async def wipe() -> None:
        node = await _client(auth_nats_server, NODE_USER)
        try:
            with pytest.raises(nats.js.errors.APIError, match="rollup"):
                await node.jetstream().publish(
                    f"$KV.{data_keys_bucket('AF_STATE')}.auditkey.user.mallory",
                    b"",
                    headers={"Nats-Rollup": "all"},
                )
        finally:
            await node.close()

    io.run(wipe(), timeout=WAIT)
    store = _keys_store(io, auth_nats_server, NODE_USER, "AF_STATE")
    try:
        keys = DataKeys(LoopStore(io, store, timeout=WAIT))
        for key_id, secret in kept.values():
            assert keys.secret(key_id) == secret
    finally:
        io.run(store.close(), timeout=WAIT)


async def test_the_node_user_hears_none_of_the_admins_replies(
    auth_nats_server: NatsServer,
) -> None:
    await _audit_with_records(auth_nats_server)
    node = await _client(auth_nats_server, NODE_USER)
    heard: list[bytes] = []

    async def snoop(msg: Any) -> None:
        heard.append(msg.data)

    await node.subscribe("_INBOX.>", cb=snoop)
    await node.flush()
    admin = await nats.connect(
        auth_nats_server.url, **connect_options(_as(auth_nats_server, ADMIN_USER))
    )
    try:
        info = await admin.jetstream().stream_info(AUDIT)
        message = await admin.jetstream().get_msg(AUDIT, seq=1)
        assert (info.state.messages, message.data) == (RECORDS, b"record 0")
        await node.flush()
    finally:
        await admin.close()
        await node.close()
    assert not [data for data in heard if b"record" in data or AUDIT.encode() in data]


def test_a_record_published_first_under_the_real_ones_request_id_does_not_drop_it(
    auth_nats_server: NatsServer, io: IoLoop
) -> None:
    state = StateSettings(backend="kv", audit_stream=AUDIT, timeout=1.0)
    node = _as(auth_nats_server, NODE_USER)
    log = io.run(JetStreamAudit.open(auth_nats_server.url, state, node, name="n"), timeout=WAIT)
    real = UserDataErased(at=1.0, node="n1", request_id="r-1", key_ids=["k"], tickets=1)
    forged = UserDataErased(at=1.0, node="evil", request_id="r-1", key_ids=[], tickets=0)

    async def forge() -> None:
        other = await _client(auth_nats_server, NODE_USER)
        try:
            await other.jetstream().publish(
                "af.audit.erasure", encode(forged), headers={"Nats-Msg-Id": "r-1"}
            )
        finally:
            await other.close()

    try:
        io.run(forge(), timeout=WAIT)
        io.run(log.append(real), timeout=WAIT)
        io.run(log.append(real), timeout=WAIT)  # the same record again: stored once
    finally:
        io.run(log.close(), timeout=WAIT)

    async def stored() -> list[bytes]:
        admin = await _client(auth_nats_server, ADMIN_USER)
        try:
            js = admin.jetstream()
            count = (await js.stream_info(AUDIT)).state.messages
            return [(await js.get_msg(AUDIT, seq=n)).data for n in range(1, count + 1)]
        finally:
            await admin.close()

    assert io.run(stored(), timeout=WAIT) == [encode(forged), encode(real)]


def test_settings_that_give_two_roles_one_stream_are_refused() -> None:
    settings = decode(
        {"events": {"dead_letter_stream": "AF_AUDIT"}, "state": {"audit_stream": "AF_AUDIT"}}
    )
    with pytest.raises(ConfigError, match=r"AF_AUDIT is also events\.dead_letter_stream"):
        JetStreamNames.from_settings(settings)


def test_a_store_directory_someone_else_could_have_made_is_refused(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    squatted = tmp_path / "squatted"
    (squatted / "auth").mkdir(parents=True)
    squatted.chmod(0o777)  # as a shared temporary directory's newcomer would leave it
    with pytest.raises(ConfigError, match=r"nats\.store_dir.*not a private directory"):
        embedded_server(NatsSettings(url=url, store_dir=str(squatted)))
    squatted.chmod(0o700)
    (squatted / "auth").chmod(0o700)
    planted = squatted / "auth" / f"{ADMIN_USER}.password"
    planted.write_text("a password someone chose")
    planted.chmod(0o644)
    with pytest.raises(ConfigError, match=r"not a private file"):
        embedded_server(NatsSettings(url=url, store_dir=str(squatted)))


def test_streams_another_node_user_made_first_to_leak_or_drop_are_refused(
    auth_nats_server: NatsServer, io: IoLoop
) -> None:
    keys = data_keys_bucket("AF_STATE")

    async def made_first() -> None:
        other = await _client(auth_nats_server, NODE_USER)
        js = other.jetstream()
        try:
            leaky = RePublish(src=f"$KV.{keys}.>", dest="af.evt.leak.>")
            await js.add_stream(
                StreamConfig(name=f"KV_{keys}", subjects=[f"$KV.{keys}.>"], republish=leaky)
            )
            await js.add_stream(StreamConfig(name=AUDIT, subjects=["af.audit.>"], max_msgs=1))
        finally:
            await other.close()

    io.run(made_first(), timeout=WAIT)
    node = _as(auth_nats_server, NODE_USER)
    state = StateSettings(backend="kv", audit_stream=AUDIT, timeout=1.0)
    with pytest.raises(Unavailable, match=f"KV bucket {keys} exists with other settings"):
        io.run(KvStore.open(auth_nats_server.url, state, node, name="n"), timeout=WAIT)
    with pytest.raises(Unavailable, match=r"has max_msgs = 1.*an admin must recreate it"):
        io.run(JetStreamAudit.open(auth_nats_server.url, state, node, name="n"), timeout=WAIT)


def test_a_stream_that_copies_what_it_stores_elsewhere_is_a_hazard() -> None:
    assert hazards(StreamConfig(name="E", subjects=["af.evt.>"])) == []
    sourced = StreamConfig(name="D", sources=[StreamSource(name=AUDIT)])
    assert hazards(sourced) == ["sources other streams"]
    kept = StreamConfig(name=AUDIT, deny_delete=True, deny_purge=True)
    assert hazards(kept, records=True) == []
    assert "has max_age = 60.0" in hazards(
        StreamConfig(name=AUDIT, deny_delete=True, deny_purge=True, max_age=60.0), records=True
    )
