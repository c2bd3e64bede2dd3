"""The dashboard in a real headless browser: Debian's Chromium, driven by Playwright.

Playwright drives the machine's own Chromium (`AF_CHROMIUM`, else `chromium`
on the PATH), so no browser is downloaded. Screenshots are kept in
`AF_TEST_ARTIFACTS` (default `test-artifacts/`) for whoever reads the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, sync_playwright

from tests.bridges.http_agents import base_url

pytestmark = pytest.mark.browser

# How soon the page must show a killed child's restart (it polls every second).
SHOWN_WITHIN_MS = 5_000
ADMIN_KEY = "dashboard-browser-admin-key-0123456789"


def _chromium() -> str:
    found = os.environ.get("AF_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("no Chromium: apt-get install chromium, or set AF_CHROMIUM to one")
    return found


def _artifact(name: str) -> Path:
    folder = Path(os.environ.get("AF_TEST_ARTIFACTS", "test-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder / name


@pytest.fixture
def browser() -> Iterator[Browser]:
    # Per test: Playwright's loop and its executor thread end with the test.
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        yield launched
        launched.close()


class Console:
    """What the page said on its console, and any error it threw."""

    def __init__(self, page: Page) -> None:
        self.errors: list[str] = []
        page.on("console", self._said)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _said(self, message: ConsoleMessage) -> None:
        if message.type in {"error", "warning"}:
            self.errors.append(f"{message.type}: {message.text}")


def test_the_page_shows_the_tree_and_a_killed_childs_restart(
    serve: Callable[..., Any], browser: Browser
) -> None:
    node, client = serve()
    assert client.post("/v1/agents/echo", json={"type": "Say", "text": "a"}).status_code == 200
    page = browser.new_page(viewport={"width": 1280, "height": 1400})
    console = Console(page)
    page.goto(base_url(node) + "/")
    assert page.url.endswith("/dashboard")
    echo = 'li[data-child="agents.echo/0"]'
    page.wait_for_selector(f'{echo}[data-restarts="0"]', timeout=SHOWN_WITHIN_MS)
    assert page.locator("#ready").text_content() == "ready"
    assert page.locator('tr[data-tier="large"]').count() == 1
    assert page.locator('tr[data-requests="http echo"]').count() == 1
    [agent] = node.runtime.directory.members("echo")
    agent.kill()
    page.wait_for_selector(f'{echo}[data-restarts="1"]', timeout=SHOWN_WITHIN_MS)
    assert "killed" in (page.locator(echo).text_content() or "")
    assert client.post("/v1/agents/echo", json={"type": "FailWith", "code": "x"}).status_code == 500
    page.wait_for_selector('#problems li:has-text("http echo")', timeout=SHOWN_WITHIN_MS)
    page.screenshot(path=_artifact("dashboard.png"), full_page=True)
    assert console.errors == []
    node.stop()  # as SIGTERM would: the page must not go on saying "ready"
    node.run(handle_signals=False)
    page.wait_for_selector('#ready:has-text("unreachable")', timeout=SHOWN_WITHIN_MS)
    assert page.locator("#offline").is_visible()
    page.close()


def test_the_page_asks_a_keyed_node_for_its_key(
    serve: Callable[..., Any], browser: Browser
) -> None:
    digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    node, _client = serve(credentials=[{"name": "ops", "key_sha256": digest, "scope": "admin"}])
    page = browser.new_page()
    console = Console(page)
    page.goto(base_url(node) + "/dashboard")
    page.wait_for_selector("#key-form:not([hidden])")
    assert page.locator("#main").is_hidden()
    page.fill("#key", ADMIN_KEY)
    page.click("#key-form button")
    page.wait_for_selector('li[data-child="agents.echo/0"]', timeout=SHOWN_WITHIN_MS)
    assert page.locator("#key-form").is_hidden()
    page.screenshot(path=_artifact("dashboard-keyed.png"))
    assert console.errors == []
    page.close()
