"""The shell blocks of README.md and docs/quickstart.md, run against nodes on free ports.

Each `bash` block runs as it is written (with `localhost:8000` pointed at
the node's port), but for the set-up lines a reader runs once: installing,
the test run, and `actorfleet run`, which the test does itself. A block
must exit 0 and answer no typed error; where a `text` block shows what it
prints, the reply's `type` must be the one shown.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bridges import free_port
from tests.conftest import WAIT

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "docs" / "quickstart.md"
README = ROOT / "README.md"
OWN_AGENT = "## 7. Your own agent"
_BLOCK = re.compile(r"```(\w+)\n(.*?)```", re.DOTALL)
_SET_UP = ("python -m pip install", "python -m pytest", "actorfleet run", "AF_TRACES=console")
_ERROR = re.compile(
    r'"code":\s*"(bad_request|forbidden|not_found|overloaded|timeout|unavailable|internal)"'
)
_TYPE = re.compile(r'"type":\s*"(\w+)"')
# An event handled on another actor (a shipment planned after an order) may
# need a moment: a failing block is run again until this passes.
SETTLE = 10.0
START = 60.0


@dataclass(frozen=True)
class Step:
    """A shell block, and the reply type its `text` block shows (if any)."""

    script: str
    shows: str | None


def steps(markdown: str) -> list[Step]:
    """The runnable shell blocks of `markdown`, in order."""
    found: list[Step] = []
    blocks = _BLOCK.findall(markdown)
    for index, (language, body) in enumerate(blocks):
        if language != "bash":
            continue
        lines = [line for line in body.splitlines() if not line.strip().startswith(_SET_UP)]
        script = "\n".join(lines).strip()
        if not script:
            continue
        following = blocks[index + 1] if index + 1 < len(blocks) else ("", "")
        types = _TYPE.findall(following[1]) if following[0] == "text" else []
        found.append(Step(script=script, shows=types[0] if types else None))
    return found


def sections() -> tuple[str, str]:
    """The quickstart up to its own-agent section, and that section."""
    text = QUICKSTART.read_text()
    head, _, own = text.partition(OWN_AGENT)
    return head, own.split("\n## ", 1)[0]


@dataclass
class RunningNode:
    port: int
    env: dict[str, str]
    cwd: Path


@pytest.fixture
def node_env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "AF_HTTP_PORT": str(free_port()),
        "AF_NATS_URL": f"nats://127.0.0.1:{free_port()}",
    }


def _start(args: list[str], env: dict[str, str], cwd: Path) -> Iterator[RunningNode]:
    log = (cwd / "node.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bridges", "run", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        cwd=cwd,
        env=env,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + START
        for line in proc.stdout:
            if line.strip() == "ready":
                break
            assert time.monotonic() < deadline, "the node did not start"
        else:
            pytest.fail(f"the node exited: {(cwd / 'node.log').read_text()}")
        yield RunningNode(port=int(env["AF_HTTP_PORT"]), env=env, cwd=cwd)
    finally:
        proc.terminate()
        proc.wait(WAIT * 4)
        if proc.stdout is not None:
            proc.stdout.close()
        log.close()


@pytest.fixture
def support_node(node_env: dict[str, str], tmp_path: Path) -> Iterator[RunningNode]:
    """`actorfleet run` on the embedded defaults: the reference service."""
    yield from _start([], node_env, tmp_path)


@pytest.fixture
def own_agent_node(node_env: dict[str, str], tmp_path: Path) -> Iterator[RunningNode]:
    """The quickstart's own agent, written where it says, run as it says."""
    _head, own = sections()
    [source] = [body for lang, body in _BLOCK.findall(own) if lang == "python"]
    name = source.splitlines()[0].removeprefix("# ").strip()
    (tmp_path / name).write_text(source)
    yield from _start(["myagents:GreeterAgent"], node_env, tmp_path)


def run_step(step: Step, node: RunningNode) -> str:
    """Run `step` against `node` (again, until `SETTLE`, while it fails); its output."""
    script = step.script.replace("localhost:8000", f"127.0.0.1:{node.port}")
    deadline = time.monotonic() + SETTLE
    while True:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", script],  # noqa: S607 - bash from PATH
            capture_output=True,
            text=True,
            cwd=node.cwd,
            env=node.env,
            timeout=START,
            check=False,
        )
        output = done.stdout
        failed = done.returncode != 0 or _ERROR.search(output) is not None
        if not failed or time.monotonic() > deadline:
            break
        time.sleep(0.2)  # the event it depends on is handled elsewhere; bounded above
    assert not failed, f"{script}\n-> exit {done.returncode}\n{output}\n{done.stderr}"
    if step.shows is not None:
        assert step.shows in _TYPE.findall(output), f"{script}\n-> {output}"
    return output


def test_the_quickstart_runs_as_written(support_node: RunningNode) -> None:
    head, _own = sections()
    ran = [run_step(step, support_node) for step in steps(head)]
    assert len(ran) >= 8  # every step of sections 2 to 6


def test_the_readme_runs_as_written(support_node: RunningNode) -> None:
    ran = [run_step(step, support_node) for step in steps(README.read_text())]
    assert ran


def test_your_own_agent_runs_as_the_quickstart_says(own_agent_node: RunningNode) -> None:
    _head, own = sections()
    [step] = steps(own)
    output = run_step(step, own_agent_node)
    # curl prints no newline of its own: the next reply follows on its line.
    assert output.startswith('{"type":"Greeting","text":"Hello, Ada!"}')
    assert '"text": "Hello, Grace!"' in output
