"""The dashboard page and its state, read over HTTP (the browser test drives the page)."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

import pytest

from bridges.http._dashboard import DASHBOARD
from bridges.http._journal import TEXT_LIMIT, Journal
from bridges.http._metrics import Metrics
from tests.bridges.http_agents import crash_echo

ADMIN_KEY = "dashboard-admin-key-0123456789"
SERVICE_KEY = "dashboard-service-key-0123456789"
STATE = f"{DASHBOARD}/state"


def _keyed(serve: Callable[..., Any]) -> Any:
    credentials = [
        {
            "name": "ops",
            "key_sha256": hashlib.sha256(ADMIN_KEY.encode()).hexdigest(),
            "scope": "admin",
        },
        {
            "name": "web",
            "key_sha256": hashlib.sha256(SERVICE_KEY.encode()).hexdigest(),
            "scope": "service",
        },
    ]
    return serve(credentials=credentials)


def test_the_root_redirects_to_the_dashboard(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"].endswith(DASHBOARD)


def test_the_page_and_its_assets_come_from_the_node_under_a_strict_policy(
    serve: Callable[..., Any],
) -> None:
    _node, client = serve()
    page = client.get(DASHBOARD)
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assets = re.findall(r'(?:src|href)="(/dashboard/assets/[^"]+)"', page.text)
    assert sorted(assets) == ["/dashboard/assets/dashboard.css", "/dashboard/assets/dashboard.js"]
    for path in assets:
        asset = client.get(path)
        assert asset.status_code == 200
        assert "http://" not in asset.text
        assert "https://" not in asset.text  # nothing fetched from elsewhere
    assert "innerHTML" not in client.get(assets[1]).text
    assert client.get("/dashboard/assets/../_dashboard.py").status_code == 404
    missing = client.get("/dashboard/assets/nothing.js")
    assert (missing.status_code, missing.json()["code"]) == (404, "not_found")
    assert 'data-needs-key="false"' in page.text


def test_the_state_shows_the_tree_the_tiers_requests_and_problems(
    serve: Callable[..., Any],
) -> None:
    node, client = serve()
    assert client.post("/v1/agents/echo", json={"type": "Say", "text": "a"}).status_code == 200
    crash_echo(node, client)
    state = client.get(STATE).json()
    assert (state["node"], state["ready"], state["reason"]) == ("web", True, "ready")
    assert state["tree"]["name"] == "root"
    [echo] = [c for c in state["tree"]["children"] if c["id"] == "agents.echo"]
    assert echo["supervisor"]["children"][0]["restarts"] == 1
    assert [t["name"] for t in state["inference"]["tiers"]] == ["large"]
    [totals] = [r for r in state["requests"] if r["agent_type"] == "echo"]
    assert (totals["edge"], totals["count"], totals["failed"]) == ("http", 2, 1)
    assert len(totals["buckets"]) == len(state["latency_buckets"]) + 1
    assert totals["buckets"][-1] == 2
    problems = [(p["kind"], p["source"]) for p in state["problems"]]
    assert ("request", "http echo") in problems
    assert any(kind == "error" and source.startswith("actorfleet.") for kind, source in problems)


def test_a_keyed_edge_asks_for_an_admin_credential(serve: Callable[..., Any]) -> None:
    _node, client = _keyed(serve)
    assert 'data-needs-key="true"' in client.get(DASHBOARD).text  # the page needs no key
    assert client.get(STATE).status_code == 401
    assert client.get(STATE, headers={"Authorization": "Bearer wrong-key"}).status_code == 401
    refused = client.get(STATE, headers={"Authorization": f"Bearer {SERVICE_KEY}"})
    assert refused.status_code == 403
    assert "admin" in refused.json()["detail"]
    allowed = client.get(STATE, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert allowed.status_code == 200
    assert allowed.json()["tree"]["name"] == "root"


def test_an_open_edge_serves_the_state_to_this_machine_only(serve: Callable[..., Any]) -> None:
    _node, client = serve()
    assert client.get(STATE, headers={"Host": "dashboard.example.com"}).status_code == 403


def test_the_journal_keeps_the_last_entries_cut_short() -> None:
    journal = Journal(size=3)
    for n in range(5):
        journal.problem("request", "http echo", f"answered 500 #{n}")
    assert [p.text for p in journal.problems()] == [f"answered 500 #{n}" for n in (2, 3, 4)]
    journal.event("published", "af.evt.X", "x" * (TEXT_LIMIT * 2))
    assert len(journal.events()[0].text) == TEXT_LIMIT


def test_the_journal_records_warnings_of_actorfleet_loggers_while_attached() -> None:
    journal = Journal()
    handler = journal.attach()
    try:
        logging.getLogger("actorfleet.test").warning("disk %s is full", "/var")
        logging.getLogger("actorfleet.test").info("not a problem")
        logging.getLogger("elsewhere").error("not ours")
    finally:
        journal.detach(handler)
    logging.getLogger("actorfleet.test").warning("after detaching")
    assert [(p.kind, p.source, p.text) for p in journal.problems()] == [
        ("warning", "actorfleet.test", "disk /var is full"),
    ]


@pytest.mark.parametrize("status", ["ok", "200", "204"])
def test_successes_are_not_problems(status: str) -> None:
    metrics = Metrics()
    metrics.observe("nats", "echo", status, 0.001)
    metrics.recorder("http", "echo")(status, 0.001)
    assert metrics.journal.problems() == []


@pytest.mark.parametrize("status", ["400", "404", "429", "bad_request", "not_found", "overloaded"])
def test_a_callers_own_mistakes_are_not_the_nodes_problems(status: str) -> None:
    # Else a caller could push the node's real problems out of the journal.
    metrics = Metrics()
    metrics.observe("http", "echo", status, 0.001)
    metrics.recorder("nats", "echo")(status, 0.001)
    assert metrics.journal.problems() == []
    [totals, *_] = metrics.request_totals()
    assert totals.failed == 1  # still counted as failed
