"""Load and observation helpers shared by the multi-node and cluster tests."""

from __future__ import annotations

import threading
import time
from collections import Counter

from nats.aio.msg import Msg

from actors import Runtime
from bridges import NatsBridge, Outcome
from tests.agents import Charge, Receipt
from tests.conftest import WAIT

CLIENTS = 4
PER_CLIENT = 75
ATTEMPT_TIMEOUT = 0.5
RETRY_FOR = 15.0
RETRY_PAUSE = 0.02


class Load:
    """Clients that charge unique ids, retrying each with the same id until it succeeds."""

    def __init__(self, runtime: Runtime, *, halfway: int) -> None:
        self.runtime = runtime
        self.receipts: dict[str, Receipt] = {}
        self.errors: list[BaseException] = []
        self.halfway = threading.Event()
        self._halfway_at = halfway
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(c,), name=f"load-{c}")
            for c in range(CLIENTS)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def join(self) -> None:
        for thread in self._threads:
            thread.join(RETRY_FOR + WAIT)

    def error_summary(self) -> dict[str, int]:
        """How many attempts failed with each error type."""
        return dict(Counter(type(e).__name__ for e in self.errors))

    def _client(self, client: int) -> None:
        ledger = self.runtime.ref("ledger")
        for i in range(PER_CLIENT):
            request_id = f"charge-{client}-{i}"
            give_up = time.monotonic() + RETRY_FOR
            while time.monotonic() < give_up:
                try:
                    receipt = ledger.ask(
                        Charge(account=request_id, amount=1),
                        timeout=ATTEMPT_TIMEOUT,
                        message_id=request_id,
                    )
                except Exception as exc:
                    with self._lock:
                        self.errors.append(exc)
                    # A client's retry policy: a short pause, then the same id again.
                    time.sleep(RETRY_PAUSE)
                    continue
                with self._lock:
                    self.receipts[request_id] = receipt
                    if len(self.receipts) >= self._halfway_at:
                        self.halfway.set()
                break


class Acks:
    """Watches a durable consumer's acks on `$JS.ACK.<stream>.<consumer>.>`."""

    def __init__(
        self, bridge: NatsBridge, consumer: str, expected: int, *, stream: str | None = None
    ) -> None:
        self.sequences: set[int] = set()
        self.all_acked = threading.Event()
        self._expected = expected
        subject = f"$JS.ACK.{stream or bridge.events.settings.stream}.{consumer}.>"
        bridge.io.run(bridge.nc.subscribe(subject, cb=self._on_ack), timeout=WAIT)

    async def _on_ack(self, msg: Msg) -> None:
        if msg.data in {b"", b"+ACK"}:  # an empty ack is an ack
            # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>...
            self.sequences.add(int(msg.subject.split(".")[5]))
            if len(self.sequences) >= self._expected:
                self.all_acked.set()


class Acked:
    """Listens to a bridge's settled events; set once `expected` sequences are acked."""

    def __init__(self, expected: int) -> None:
        self.sequences: set[int] = set()
        self.all = threading.Event()
        self._expected = expected

    def __call__(self, _subject: str, sequence: int, outcome: Outcome) -> None:
        if outcome == Outcome.ACKED:
            self.sequences.add(sequence)
            if len(self.sequences) >= self._expected:
                self.all.set()


def stream_messages(bridge: NatsBridge) -> int:
    info = bridge.io.run(bridge.events.js.stream_info(bridge.events.settings.stream), timeout=WAIT)
    return info.state.messages
