"""The `actorfleet` commands that talk to a running node over HTTP: status, send.

They import httpx (and the tree's types) when they run, not when the
command line is parsed, so `actorfleet --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Final

import msgspec

if TYPE_CHECKING:
    import httpx

    from config import Settings
    from supervisors import SupervisorStatistics

_START_ONE: Final = "; start one (actorfleet run), or give its --url or the --config it runs with"
API_KEY_ENV: Final = "AF_API_KEY"
_CLIENT_TIMEOUT: Final = 10.0
_OK: Final = 200


def default_url(settings: Settings) -> str:
    """The node's API address, from the settings it would run with."""
    host = settings.http.host
    host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host  # noqa: S104 - a bind, not a target
    return f"http://{host}:{settings.http.port}"


def add_client_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register `status`, `send` and `audit`."""
    status = commands.add_parser("status", help="print a running node's supervision tree")
    status.add_argument("--url", help="the node's HTTP address (default: from the config)")
    status.add_argument("--config", help="TOML file (default: the embedded config/default.toml)")
    send = commands.add_parser("send", help="send one request to an agent type and print the reply")
    send.add_argument("agent_type", help="the agent type, e.g. support")
    send.add_argument("body", help='the request as JSON, e.g. \'{"user_id": "u1", ...}\'')
    send.add_argument("--stream", action="store_true", help="show chunks as they arrive (SSE)")
    send.add_argument("--request-id", help="X-Request-Id: send the same one to retry safely")
    send.add_argument("--timeout", type=float, help="X-Request-Timeout in seconds")
    send.add_argument("--url", help="the node's HTTP address (default: from the config)")
    send.add_argument("--config", help="TOML file (default: the embedded config/default.toml)")
    audit = commands.add_parser("audit", help="print the audit log, unsealed where keys remain")
    audit.add_argument("--last", type=int, default=20, help="how many records (default 20)")
    audit.add_argument("--config", help="TOML file (default: the embedded config/default.toml)")


def _headers(args: argparse.Namespace) -> dict[str, str]:
    headers = {}
    key = os.environ.get(API_KEY_ENV)
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if getattr(args, "request_id", None):
        headers["X-Request-Id"] = args.request_id
    if getattr(args, "timeout", None):
        headers["X-Request-Timeout"] = str(args.timeout)
    return headers


def print_tree(tree: SupervisorStatistics, indent: str = "") -> None:
    """One line per supervisor and child, children indented."""
    print(f"{indent}{tree.name} [{tree.strategy}] {tree.status}")
    for child in tree.children:
        if child.supervisor is not None:
            print_tree(child.supervisor, indent + "  ")
        else:
            detail = f": {child.detail}" if child.detail else ""
            restarts = f", {child.restarts} restarts" if child.restarts else ""
            print(
                f"{indent}  {child.id} ({child.kind}, {child.restart}) {child.status}"
                f"{restarts}{detail}"
            )


def status(url: str) -> int:
    """Print the tree and the overall health from `/healthz`; 0 if it passes or warns."""
    import httpx  # noqa: PLC0415 - only when it runs (a quick --help)

    from supervisors import SupervisorStatistics  # noqa: PLC0415 - likewise

    try:
        response = httpx.get(f"{url}/healthz", timeout=_CLIENT_TIMEOUT)
    except httpx.HTTPError as exc:
        print(f"actorfleet status: no node answers at {url}: {exc}{_START_ONE}", file=sys.stderr)
        return 1
    report = response.json()
    print(f"{url}: {report.get('status', 'unknown')}")
    if report.get("tree"):
        print_tree(msgspec.convert(report["tree"], SupervisorStatistics))
    for name, findings in sorted(report.get("checks", {}).items()):
        for finding in findings:
            if finding.get("status") != "pass":
                print(f"  {name}: {finding.get('status')} {finding.get('output', '')}")
    return 0 if response.status_code == _OK else 1


def send(args: argparse.Namespace, url: str) -> int:
    """POST the body to the agent type; print the reply (or each chunk, then the result)."""
    import httpx  # noqa: PLC0415 - only when it runs (a quick --help)

    try:
        body = json.loads(args.body)
    except json.JSONDecodeError as exc:
        print(f"actorfleet send: the body is not JSON: {exc}", file=sys.stderr)
        return 2
    path = f"{url}/v1/agents/{args.agent_type}" + ("/stream" if args.stream else "")
    try:
        with httpx.stream(
            "POST", path, json=body, headers=_headers(args), timeout=None if args.stream else 300
        ) as response:
            if not args.stream or response.status_code != _OK:
                response.read()
                return _print_reply(response)
            return _print_events(_sse(response.iter_lines()))
    except httpx.ConnectError as exc:
        print(f"actorfleet send: no node answers at {url}: {exc}{_START_ONE}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"actorfleet send: {exc}", file=sys.stderr)
        return 1


def _print_reply(response: httpx.Response) -> int:
    text = json.dumps(response.json(), indent=2) if response.content else ""
    ok = response.status_code < HTTPStatus.BAD_REQUEST
    print(text, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _sse(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    event, data = "message", list[str]()
    for line in lines:
        if not line:
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _print_events(events: Iterator[tuple[str, str]]) -> int:
    for event, data in events:
        if event == "chunk":
            print(json.dumps(json.loads(data)), flush=True)
        else:
            print(json.dumps(json.loads(data), indent=2), flush=True)
            return 0 if event == "result" else 1
    return 1
