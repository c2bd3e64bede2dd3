"""The HTTP server's connections: how many may be open, how long headers may take.

uvicorn bounds an idle kept-alive connection (`timeout_keep_alive`) and the
size of a request's headers (h11's 16 KiB), but not how long a client may
take to send them: a connection that sends part of a request, then a byte now
and then (slowloris), is held for ever, on its first request or on a
kept-alive connection's next one. Its `limit_concurrency` answers 503 only
once a request's headers are in, so it bounds neither open connections nor
slow ones. `BoundedH11Protocol`, given to uvicorn as its `http` protocol
class, adds both bounds, as nginx's `client_header_timeout` and
`worker_connections` do:

* `header_timeout`: a request's headers must be complete this many seconds
  after the connection is accepted, or after the first byte of a kept-alive
  connection's next request (reading each byte does not restart the clock);
  then each read of its body must come within as long of the one before
  (nginx's `client_body_timeout`); else the connection gets a 408 and is
  closed.
* `max_connections`: a connection accepted while this many are open gets a
  503 with `Retry-After` and is closed at once.

It also answers a request h11 cannot parse (uvicorn's plain-text 400) with a
problem, like every other failure of the edge.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, ClassVar, Final

import h11
import msgspec
from uvicorn.protocols.http.h11_impl import H11Protocol

from bridges.http._problems import PROBLEM_JSON, problem_body, retry_after_header
from messages import ErrorCode

if TYPE_CHECKING:
    from uvicorn.config import Config
    from uvicorn.server import ServerState

REFUSED_RETRY_AFTER: Final = 1.0
"""Seconds a client refused for `max_connections` is told to wait."""
# The h11 states in which our side may still start a response.
_MAY_ANSWER: Final = frozenset({h11.IDLE, h11.SEND_RESPONSE})
# Their states while the request is still being read (headers, then body).
_READING: Final = frozenset({h11.IDLE, h11.SEND_BODY})


def bounded_protocol(*, header_timeout: float, max_connections: int) -> type[BoundedH11Protocol]:
    """An h11 protocol class for uvicorn's `http` setting, with these bounds."""

    class Bounded(BoundedH11Protocol):
        pass

    Bounded.header_timeout = header_timeout
    Bounded.max_connections = max_connections
    return Bounded


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with a header deadline and a connection limit.

    Attributes:
        header_timeout: Seconds a request's headers may take to arrive.
        max_connections: Connections open at once on this server.
    """

    header_timeout: ClassVar[float]
    max_connections: ClassVar[int]

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self._header_deadline: asyncio.TimerHandle | None = None

    def connection_made(  # type: ignore[override] # as uvicorn's: a socket transport
        self, transport: asyncio.Transport
    ) -> None:
        """Serve the connection, or refuse it when `max_connections` are open."""
        crowded = len(self.connections) >= self.max_connections
        super().connection_made(transport)
        if crowded:
            self.connections.discard(self)
            detail = f"the server has its http.max_connections ({self.max_connections}) open"
            self._answer(503, ErrorCode.UNAVAILABLE, detail, retry_after=REFUSED_RETRY_AFTER)
            return
        self._start_header_deadline()

    def connection_lost(self, exc: Exception | None) -> None:
        """Forget the deadline, then let uvicorn clean up."""
        self._stop_header_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Parse `data`; the headers' deadline, then one per read of the body."""
        super().data_received(data)
        state = self.conn.their_state
        if self.transport.is_closing() or state not in _READING:
            self._stop_header_deadline()
        elif state is h11.SEND_BODY:
            # As nginx's client_body_timeout: each read of the body must come
            # within header_timeout of the one before.
            self._stop_header_deadline()
            self._start_header_deadline()
        elif self._header_deadline is None:
            # The first bytes of a kept-alive connection's next request (uvicorn
            # stopped its keep-alive timer on them): its headers get the same time.
            self._start_header_deadline()

    def send_400_response(self, msg: str) -> None:
        """Answer a request h11 cannot parse with a problem (uvicorn's hook for its 400)."""
        del msg  # uvicorn's text; h11 does not say more either
        self._answer(400, ErrorCode.BAD_REQUEST, "the request is not valid HTTP/1.1")

    def _start_header_deadline(self) -> None:
        self._header_deadline = self.loop.call_later(self.header_timeout, self._headers_too_slow)

    def _stop_header_deadline(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_slow(self) -> None:
        self._header_deadline = None
        state = self.conn.their_state
        if state in _READING and not self.transport.is_closing():
            what = "headers" if state is h11.IDLE else "body"
            detail = (
                f"the request's {what} did not arrive within "
                f"http.header_timeout ({self.header_timeout:g} s)"
            )
            self._answer(408, ErrorCode.TIMEOUT, detail)

    def _answer(
        self, status: int, code: str, detail: str, *, retry_after: float | None = None
    ) -> None:
        """Send a problem, then close (only close if a response has already begun)."""
        if self.conn.our_state in _MAY_ANSWER:
            problem = problem_body(status, code, detail, retry_after=retry_after)
            body = msgspec.json.encode(problem)
            headers = [
                *self.server_state.default_headers,
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            if retry_after is not None:
                headers.append((b"retry-after", retry_after_header(retry_after).encode()))
            response = h11.Response(status_code=status, headers=headers, reason=problem.title)
            for event in (response, h11.Data(data=body), h11.EndOfMessage()):
                output = self.conn.send(event)
                if output:
                    self.transport.write(output)
        self.transport.close()
