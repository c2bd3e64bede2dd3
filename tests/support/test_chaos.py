"""The node SIGKILLed mid-flow and restarted: no ticket, order or event lost or doubled."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest

from actors import state_key
from actors.support import InvoiceValidated, OrderCreated, ShipmentPlanned, TicketCreated
from bridges import IoLoop, NatsServer
from bridges.nats._embedded import free_port
from bridges.stores import KvStore
from config import NatsSettings, StateSettings
from tests.bridges.conftest import start_node_process
from tests.conftest import WAIT
from tests.support.service import stored

RESTART_WAIT = 30.0


def _config(tmp_path: Path, nats_url: str, port: int) -> Path:
    pools = "".join(
        f'[[pools]]\nagent = "actors.support:{name}"\n'
        for name in ("SupportAgent", "TicketsAgent", "PricingAgent", "ShippingAgent")
    )
    config = tmp_path / "node.toml"
    config.write_text(
        f'[nats]\nurl = "{nats_url}"\nembed = false\n\n'
        f"[http]\nenabled = true\nport = {port}\n\n"
        '[state]\nbackend = "kv"\naudit_stream = "AF_AUDIT"\n\n'
        # A crashed handling is redelivered after handler_timeout + 5 s.
        "[events]\nhandler_timeout = 2.0\n\n"
        '[[inference.tiers]]\nname = "large"\n[inference.tiers.backend]\nkind = "scripted"\n'
        'rules_files = ["actors.support:scripted_rules.toml"]\n'
        # Slow enough that the answer is still being written when the node dies.
        "token_delay = 0.05\n\n" + pools
    )
    return config


class Watch:
    """Core-NATS subscriptions that set an event per subject when a message arrives."""

    def __init__(self, io: IoLoop, url: str, subjects: list[str]) -> None:
        self.io = io
        self.seen = {s: threading.Event() for s in subjects}
        self.nc = io.run(nats.connect(url), timeout=WAIT)
        for subject, event in self.seen.items():
            io.run(self.nc.subscribe(subject, cb=_setter(event)), timeout=WAIT)

    def close(self) -> None:
        self.io.run(self.nc.close(), timeout=WAIT)


def _setter(event: threading.Event) -> Callable[[Any], Any]:
    async def on_message(_: Any) -> None:
        event.set()

    return on_message


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[Callable[[Path, str], subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []

    def start(config: Path, name: str) -> subprocess.Popen[str]:
        proc = start_node_process(config, name, tmp_path / f"{name}.log")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(WAIT) == 0
        assert proc.stdout is not None
        proc.stdout.close()


def _post_in_background(url: str, body: dict[str, Any], request_id: str) -> threading.Thread:
    def post() -> None:
        # The node is killed under this request: no answer is expected.
        with contextlib.suppress(httpx.HTTPError):
            httpx.post(url, json=body, headers={"X-Request-Id": request_id}, timeout=WAIT)

    thread = threading.Thread(target=post, daemon=True)
    thread.start()
    return thread


@pytest.mark.slow
def test_a_node_killed_mid_flow_and_restarted_loses_and_doubles_nothing(
    nats_server: NatsServer,
    io: IoLoop,
    tmp_path: Path,
    node_process: Callable[[Path, str], subprocess.Popen[str]],
) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/agents"
    config = _config(tmp_path, nats_server.url, port)
    subjects = ["af.evt.TicketCreated", "af.evt.OrderCreated", "af.evt.ShipmentPlanned"]
    watch = Watch(io, nats_server.url, subjects)
    complaint = {"user_id": "jane", "message": "I was charged twice, I want my money back"}
    order = {
        "type": "OrderRequest",
        "customer_id": "acme",
        "base_price_usd": 200,
        "contract_length_months": 12,
        "weight_kg": 5,
        "destination": {"country": "FR"},
    }
    try:
        # 1. Killed after the ticket is opened, while the answer is being written.
        first = node_process(config, "first")
        pending = _post_in_background(f"{base}/support", complaint, "chaos-ticket")
        assert watch.seen["af.evt.TicketCreated"].wait(WAIT)
        first.kill()
        pending.join(WAIT)
        # 2. Killed again once the order is placed, while shipping may be handling it.
        second = node_process(config, "second")
        pending = _post_in_background(f"{base}/pricing", order, "chaos-order")
        assert watch.seen["af.evt.OrderCreated"].wait(WAIT)
        second.kill()
        pending.join(WAIT)
        # 3. Restarted: the clients retry with the same request ids.
        node_process(config, "third")
        retried = _post(f"{base}/support", complaint, "chaos-ticket")
        placed = _post(f"{base}/pricing", order, "chaos-order")
        # Planned before the second kill, or after it once the event is redelivered.
        assert watch.seen["af.evt.ShipmentPlanned"].wait(RESTART_WAIT)
        shipment = _post(f"{base}/shipping", {"order_id": placed["order_id"]}, "chaos-query")
    finally:
        watch.close()

    url = nats_server.url
    [ticket_event] = stored(url, "af.evt.TicketCreated", TicketCreated)
    assert ticket_event.ticket_id == retried["ticket_id"]
    assert [e.order_id for e in stored(url, "af.evt.OrderCreated", OrderCreated)] == [
        placed["order_id"]
    ]
    assert len(stored(url, "af.evt.InvoiceValidated", InvoiceValidated)) == 1
    [planned] = stored(url, "af.evt.ShipmentPlanned", ShipmentPlanned)
    assert (planned.order_id, planned.carrier) == (placed["order_id"], shipment["carrier"])
    kv = io.run(
        KvStore.open(url, StateSettings(backend="kv"), NatsSettings(), name="check"), timeout=WAIT
    )
    try:
        tickets = io.run(kv.scan(state_key("tickets", "jane")), timeout=WAIT)
        orders = io.run(kv.scan("order"), timeout=WAIT)
    finally:
        io.run(kv.close(), timeout=WAIT)
    assert tickets == [state_key("tickets", "jane", retried["ticket_id"])]
    assert orders == [state_key("order", placed["order_id"])]


def _post(url: str, body: dict[str, Any], request_id: str) -> dict[str, Any]:
    response = httpx.post(url, json=body, headers={"X-Request-Id": request_id}, timeout=WAIT)
    assert response.status_code == httpx.codes.OK, response.text
    reply: dict[str, Any] = response.json()
    return reply
