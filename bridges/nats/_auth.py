"""NATS credentials and TLS: nats-py's options from `[nats]`, and the embedded server's users.

Every connection a node opens (its bridge, state store, audit log, model
workers, the CLI) takes its credentials and TLS from `connect_options`. The
embedded server's users are generated once into `<store_dir>/auth/`
(`EmbeddedUsers`); their permissions (`node_permissions`) confine the node
user to what a node does: it cannot change, purge or delete any stream,
read the audit log, or list the audit data keys.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import ssl
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from messages import ConfigError

if TYPE_CHECKING:
    from config import NatsSettings, Settings

NODE_USER: Final = "af-node"
ADMIN_USER: Final = "af-admin"
ADMIN_INBOX: Final = "_INBOX_ADMIN"
"""Where the admin's replies go: a namespace the node user cannot subscribe to."""
AUTH_DIR: Final = "auth"
SERVER_CONFIG: Final = "server.conf"
_PASSWORD_BYTES: Final = 32
_SECRET_MODE: Final = 0o600
_DIR_MODE: Final = 0o700
_JS: Final = "$JS.API"


def connect_options(
    settings: NatsSettings, *, env: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """nats-py's `connect` keywords for the credentials and TLS that `settings` name.

    Credentials in the URL (`nats://user:password@host`) are nats-py's own
    and need nothing here.

    Raises:
        ConfigError: Naming the key, if a secret or file cannot be read.
    """
    env = os.environ if env is None else env
    options: dict[str, Any] = {}
    if settings.user:
        options["user"] = settings.user
        options["password"] = _password(settings, env)
    if settings.token_env:
        options["token"] = _from_env("nats.token_env", settings.token_env, env)
    if settings.nkey_seed_file:
        _need_nkeys("nats.nkey_seed_file")
        options["nkeys_seed"] = settings.nkey_seed_file
    if settings.creds_file:
        _need_nkeys("nats.creds_file")
        options["user_credentials"] = settings.creds_file
    context = tls_context(settings)
    if context is not None:
        options["tls"] = context
    if settings.tls_hostname:
        options["tls_hostname"] = settings.tls_hostname
    if settings.user == ADMIN_USER:
        # The node user may subscribe to _INBOX.>: the admin's replies (the
        # audit log it reads, the keys it opens) go where it may not.
        options["inbox_prefix"] = ADMIN_INBOX
    return options


def tls_context(settings: NatsSettings) -> ssl.SSLContext | None:
    """The TLS context for the CA and client certificate configured; None if neither is.

    Raises:
        ConfigError: If a file is not a certificate or key, or they do not match.
    """
    if not (settings.tls_ca_file or settings.tls_cert_file):
        return None
    try:
        context = ssl.create_default_context(cafile=settings.tls_ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("nats.tls_ca_file", _why(exc)) from None
    if settings.tls_cert_file:
        try:
            context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError("nats.tls_cert_file", _why(exc)) from None
    return context


def _why(exc: Exception) -> str:
    return f"cannot load it: {getattr(exc, 'reason', None) or exc}"


def _password(settings: NatsSettings, env: Mapping[str, str]) -> str:
    if settings.password_env:
        return _from_env("nats.password_env", settings.password_env, env)
    try:
        password = Path(settings.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError("nats.password_file", f"cannot read it: {exc.strerror}") from None
    if not password:
        raise ConfigError("nats.password_file", "the file is empty")
    return password


def _from_env(key: str, variable: str, env: Mapping[str, str]) -> str:
    value = env.get(variable, "")
    if not value:
        raise ConfigError(key, f"the environment variable {variable} is not set")
    return value


def _need_nkeys(key: str) -> None:
    if importlib.util.find_spec("nkeys") is None:
        raise ConfigError(key, "NKey authentication needs the nkeys package (pip install nkeys)")


@dataclass(frozen=True, kw_only=True)
class JetStreamNames:
    """What a node's connections touch on JetStream, for the node user's permissions.

    Attributes:
        prefix: First token of every actorfleet subject.
        event_streams: Streams the node publishes to and consumes from.
        audit_stream: The audit log (publish only); empty: none.
        state_bucket: The state KV bucket.
    """

    prefix: str = "af"
    event_streams: tuple[str, ...] = ("AF_EVENTS", "AF_DEAD_LETTERS")
    audit_stream: str = "AF_AUDIT"
    state_bucket: str = "AF_STATE"

    @classmethod
    def from_settings(cls, settings: Settings) -> JetStreamNames:
        """The names `settings` use.

        Raises:
            ConfigError: If two of them name one stream: the node user's
                rights on one (consumers on the event streams) would then
                reach the other (the audit log, the data keys).
        """
        names = cls(
            prefix=settings.nats.prefix,
            event_streams=(settings.events.stream, settings.events.dead_letter_stream),
            audit_stream=settings.state.audit_stream,
            state_bucket=settings.state.bucket,
        )
        streams = {
            "events.stream": names.event_streams[0],
            "events.dead_letter_stream": names.event_streams[1],
            "state.audit_stream": names.audit_stream,
            "state.bucket": f"KV_{names.state_bucket}",
            "state.bucket (its data keys)": f"KV_{names.keys_bucket}",
        }
        seen: dict[str, str] = {}
        for key, stream in streams.items():
            if stream and stream in seen:
                raise ConfigError(key, f"{stream} is also {seen[stream]}'s stream")
            seen[stream] = key
        return names

    @property
    def keys_bucket(self) -> str:
        """The bucket of the audit data keys."""
        return data_keys_bucket(self.state_bucket)


def data_keys_bucket(state_bucket: str) -> str:
    """The KV bucket that holds the audit data keys beside `state_bucket`."""
    return f"{state_bucket}_KEYS"


# The keys of `actors.DataKeys`, each read by its name: a subject's current
# key, every key by id, and a subject's key ids. (Entries that earlier
# versions indexed under `auditkey.index.` stay in the state bucket.)
DATA_KEY_PREFIXES: Final = ("auditkey.user.", "auditkey.id.", "auditkey.ids.")


def node_permissions(names: JetStreamNames) -> dict[str, Any]:
    """The node user's permissions (nats-server's `permissions` block).

    It may serve and call agents, workers and control subjects, publish and
    consume events, create the streams it uses (creating one that exists
    with other settings fails) and use the state bucket. It may put and
    delete audit data keys and read one by its name, but not list them
    (stream info with a subject filter, consumers and watchers are how keys
    are listed, and none is allowed on their bucket). It may append to the
    audit log but not read it, and it may not update, purge or delete any
    stream or message.
    """
    p = names.prefix
    state, keys = f"KV_{names.state_bucket}", f"KV_{names.keys_bucket}"
    streams = [*names.event_streams, state, keys]
    informed = [*names.event_streams, state]
    if names.audit_stream:
        streams.append(names.audit_stream)
        informed.append(names.audit_stream)
    core = [f"{p}.agent.>", f"{p}.evt.>", f"{p}.dlq.>", f"{p}.inf.>", f"{p}.ctl.>"]
    publish = [
        *core,
        f"{p}.audit.>",
        "$SRV.>",
        "_INBOX.>",
        f"$KV.{names.state_bucket}.>",
        f"$KV.{names.keys_bucket}.>",
        f"{_JS}.INFO",
        *(f"{_JS}.STREAM.CREATE.{name}" for name in streams),
        *(f"{_JS}.STREAM.INFO.{name}" for name in informed),
        f"{_JS}.DIRECT.GET.{state}",
        f"{_JS}.DIRECT.GET.{state}.>",
        f"{_JS}.STREAM.MSG.GET.{state}",
        # One data key, by its name: the last message of its subject.
        f"{_JS}.DIRECT.GET.{keys}.$KV.{names.keys_bucket}.>",
    ]
    for name in names.event_streams:
        publish += [
            f"{_JS}.CONSUMER.CREATE.{name}.>",
            f"{_JS}.CONSUMER.DURABLE.CREATE.{name}.>",
            f"{_JS}.CONSUMER.INFO.{name}.>",
            f"{_JS}.CONSUMER.MSG.NEXT.{name}.>",
            f"$JS.ACK.{name}.>",
        ]
    deny = [
        f"{_JS}.STREAM.UPDATE.>",
        f"{_JS}.STREAM.DELETE.>",
        f"{_JS}.STREAM.PURGE.>",
        f"{_JS}.STREAM.MSG.DELETE.>",
    ]
    return {
        "publish": {"allow": publish, "deny": deny},
        "subscribe": {"allow": [*core, "$SRV.>", "_INBOX.>"]},
    }


def private_directory(path: Path, *, key: str) -> None:
    """Make `path` (mode 0700) unless it exists; refuse it unless it is this user's alone.

    A directory another local user made first (in a shared temporary
    directory, say) could hold passwords they chose, or JetStream files
    they can rewrite.

    Raises:
        ConfigError: Naming `key`, if it is a link, not a directory, owned by
            another user, or open to group or others.
    """
    path.mkdir(mode=_DIR_MODE, parents=True, exist_ok=True)
    _check_private(path, key=key, kind="directory")


def private_file(path: Path, *, key: str) -> None:
    """Refuse `path`, if it exists, unless it is a plain file of this user's alone.

    Raises:
        ConfigError: Naming `key`, as `private_directory`.
    """
    if os.path.lexists(path):
        _check_private(path, key=key, kind="file")


def _check_private(path: Path, *, key: str, kind: str) -> None:
    found = path.lstat()
    wanted = stat.S_ISDIR if kind == "directory" else stat.S_ISREG
    if not wanted(found.st_mode) or found.st_uid != os.getuid() or found.st_mode & 0o077:
        reason = (
            f"{path} is not a private {kind} of this user (owner uid {found.st_uid}, mode"
            f" {stat.filemode(found.st_mode)}); remove it, or choose another {key}"
        )
        raise ConfigError(key, reason)


class EmbeddedUsers:
    """The embedded server's users and their passwords, one file each (mode 0600).

    `<directory>/af-node.password` is the node user's (for this node, its
    model workers, and other nodes that join); `af-admin.password` the
    admin's (unconfined: updates streams, reads the audit log and keys).

    Args:
        directory: Where the password files live (`<store_dir>/auth`).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def password_file(self, user: str) -> Path:
        """The file holding `user`'s password."""
        return self.directory / f"{user}.password"

    def exists(self) -> bool:
        """Whether the node user's password has been generated and can be read."""
        return os.access(self.password_file(NODE_USER), os.R_OK)

    def ensure(self) -> bool:
        """Generate any password not made yet; True if one was made now.

        Raises:
            ConfigError: If the directory or a password file is not this
                user's own and private (another local user made it).
        """
        private_directory(self.directory, key="nats.store_dir")
        for user in (NODE_USER, ADMIN_USER):
            private_file(self.password_file(user), key="nats.store_dir")
        made = False
        for user in (NODE_USER, ADMIN_USER):
            path = self.password_file(user)
            if path.exists():
                continue
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, _SECRET_MODE)
            with os.fdopen(descriptor, "w", encoding="utf-8") as file:
                file.write(secrets.token_urlsafe(_PASSWORD_BYTES) + "\n")
            made = True
        return made

    def password(self, user: str) -> str:
        """`user`'s password.

        Raises:
            ConfigError: If its file is not this user's own and private.
        """
        path = self.password_file(user)
        private_file(path, key="nats.store_dir")
        return path.read_text(encoding="utf-8").strip()

    def settings_for(self, settings: NatsSettings, user: str = NODE_USER) -> NatsSettings:
        """`settings` that connect as `user` (with its password file)."""
        return msgspec.structs.replace(
            settings, user=user, password_env="", password_file=str(self.password_file(user))
        )

    def write_server_config(self, names: JetStreamNames) -> Path:
        """Write nats-server's `authorization` block (mode 0600); return its path.

        Written at every start, so the permissions follow the settings.
        """
        users = [
            {
                "user": NODE_USER,
                "password": self.password(NODE_USER),
                "permissions": node_permissions(names),
            },
            {"user": ADMIN_USER, "password": self.password(ADMIN_USER)},
        ]
        path = self.directory / SERVER_CONFIG
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _SECRET_MODE)
        with os.fdopen(descriptor, "w", encoding="utf-8") as file:
            # nats-server's configuration format reads JSON.
            json.dump({"authorization": {"users": users}}, file, indent=2)
        return path

    def __repr__(self) -> str:
        return f"EmbeddedUsers({str(self.directory)!r})"


def embedded_users(settings: NatsSettings, store_dir: Path) -> EmbeddedUsers | None:
    """The users of the embedded server kept in `store_dir`, if it requires credentials."""
    if not settings.embed_auth:
        return None
    return EmbeddedUsers(store_dir / AUTH_DIR)
