"""One way to open a NATS connection: credentials and TLS from `[nats]`, reconnecting."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final

import nats
import nats.aio.client
import nats.errors

from bridges.nats._auth import connect_options
from config import redact_url
from messages import Unavailable

if TYPE_CHECKING:
    from config import NatsSettings

logger: Final = logging.getLogger("actorfleet.nats")
_CRLF: Final = b"\r\n"
LOG_INTERVAL: Final = 5.0
"""At most one line per cause in this many seconds while a connection is down."""


class RateLimitedLog:
    """Logs at most one line per cause every `interval` seconds, counting the rest.

    A lost server makes every reconnect attempt fail the same way (several
    times a second, on each connection of a node); one line per cause says
    as much, and the next says how many were held back.
    """

    __slots__ = ("_interval", "_lock", "_logger", "_seen")

    def __init__(self, log: logging.Logger, *, interval: float = LOG_INTERVAL) -> None:
        self._logger = log
        self._interval = interval
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[float, int]] = {}

    def log(self, level: int, cause: str, message: str) -> None:
        """Log `message` at `level` unless a line of the same `cause` went out lately."""
        if not self._logger.isEnabledFor(level):
            return
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(cause, (-math.inf, 0))
            if now - last < self._interval:
                self._seen[cause] = (last, held + 1)
                return
            self._seen[cause] = (now, 0)
        more = f" ({held} more like it held back)" if held else ""
        self._logger.log(level, "%s%s", message, more)


_errors: Final = RateLimitedLog(logger)


class MergingClient(nats.aio.client.Client):
    """nats-py's client, but a header that comes twice keeps both values.

    nats-py keeps the last value of a repeated header, so a request with two
    `Af-Deadline` headers would be read by whichever came last. Here the
    values are combined into one, comma-separated, as HTTP combines field
    lines (RFC 9110, section 5.3): a repeated single-valued header then
    fails its check instead of being silently chosen.
    """

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        found: dict[str, str] = {}
        for line in raw.split(_CRLF):
            name, colon, value = line.partition(b":")
            if not colon:
                continue
            try:
                key = name.strip().decode("ascii")
            except UnicodeDecodeError:
                continue
            if not key or any(c.isspace() for c in key):
                continue
            text = value.strip().decode("utf-8", "replace")
            found[key] = f"{found[key]}, {text}" if key in found else text
        return found


async def connect(
    servers: list[str], *, settings: NatsSettings | None = None, **options: Any
) -> MergingClient:
    """`nats.connect`, with a `MergingClient`.

    With `settings`, the credentials and TLS they name are used
    (`connect_options`); `options` given here win.

    Raises:
        ConfigError: If a credential or TLS file of `settings` cannot be used.
    """
    client = MergingClient()
    chosen = {} if settings is None else connect_options(settings)
    await client.connect(servers, **(chosen | options))
    return client


class ClosedWatch:
    """Tells its listeners once a connection is closed for good (nats-py's `closed_cb`).

    nats-py reconnects after a lost socket, but a protocol error from the
    server (`-ERR`) closes the client for good. Whoever holds such a
    connection listens here and crashes, so its supervisor opens a new one;
    nothing stays half-dead. A close the holder asked for (`expect`) is not
    news.
    """

    __slots__ = ("_client", "_expected", "_listeners", "reason")

    def __init__(self) -> None:
        self._client: nats.aio.client.Client | None = None
        self._expected = False
        self._listeners: list[Callable[[str], None]] = []
        self.reason: str | None = None

    @property
    def bound(self) -> bool:
        """Whether the connection is up (was bound once)."""
        return self._client is not None

    def bind(self, client: nats.aio.client.Client) -> None:
        """The connection watched (its `last_error` says why it closed)."""
        self._client = client

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call `callback(reason)` (on the loop) when the connection is lost; at once if it is."""
        if self.reason is not None:
            callback(self.reason)
        else:
            self._listeners.append(callback)

    def expect(self) -> None:
        """The holder is closing the connection itself: tell no one."""
        self._expected = True

    async def closed(self) -> None:
        """nats-py's `closed_cb`."""
        if self._expected or self.reason is not None:
            return
        error = self._client.last_error if self._client is not None else None
        self.reason = f"the NATS connection was closed: {error or 'no reason given'}"
        logger.warning("%s", self.reason)
        listeners, self._listeners = self._listeners, []
        for callback in listeners:
            callback(self.reason)


async def open_connection(
    url: str, *, name: str, settings: NatsSettings, watch: ClosedWatch | None = None
) -> nats.aio.client.Client:
    """Connect to `url` (comma-separated for a cluster), reconnecting forever after.

    `watch` learns if the connection is ever closed for good.

    Raises:
        Unavailable: If no server answers within `settings.connect_timeout`
            (or it refuses the credentials).
        ConfigError: If a credential or TLS file of `settings` cannot be used.
    """
    watch = watch or ClosedWatch()
    last: list[Exception] = []

    async def on_error(error: Exception) -> None:
        # Before the first connection each refused attempt is kept, not
        # logged: the one line that matters is the Unavailable below.
        if not watch.bound:
            last[:] = [error]
            return
        await _log_error(error)

    connecting = connect(
        url.split(","),
        settings=settings,
        name=name,
        reconnect_time_wait=settings.reconnect_wait,
        max_reconnect_attempts=-1,
        connect_timeout=max(1, math.ceil(settings.connect_timeout)),
        error_cb=on_error,
        closed_cb=watch.closed,
    )
    try:
        # With reconnects allowed nats-py retries the first connect forever.
        client = await asyncio.wait_for(connecting, settings.connect_timeout)
    except (OSError, TimeoutError, nats.errors.Error) as exc:
        cause = last[0] if last else exc
        msg = (
            f"no NATS server answers at {redact_url(url)} within"
            f" {settings.connect_timeout:g} s ({str(cause) or type(cause).__name__}):"
            " start a node (actorfleet run) or set nats.url (AF_NATS_URL)"
        )
        raise Unavailable(msg) from exc
    watch.bind(client)
    return client


async def _log_error(error: Exception) -> None:
    # nats-py's default logs a traceback at ERROR for each failed reconnect.
    text = str(error) or type(error).__name__
    _errors.log(logging.WARNING, f"{type(error).__name__}: {text}", f"NATS: {text}")


def supports_message_ttl(nc: nats.aio.client.Client) -> bool:
    """Whether the connected server honours per-message TTLs (nats-server 2.11+)."""
    version = nc.connected_server_version
    return (version.major, version.minor) >= (2, 11)


def connection_problem(nc: nats.aio.client.Client, what: str) -> str | None:
    """Why `what` on connection `nc` cannot serve now, or None if it can."""
    if nc.is_closed:
        return f"{what}: the NATS connection is closed"
    if not nc.is_connected:
        return f"{what}: NATS is disconnected (reconnecting)"
    return None
