from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from messages import ConfigError
from supervisors import ProcessChild, pin_cpus

SLEEPER = [sys.executable, "-c", "import signal; signal.pause()"]


def _in_thread(fn):  # type: ignore[no-untyped-def]
    """Run fn on a fresh thread, so that pinning it leaves the test thread alone."""
    out: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    if errors:
        raise errors[0]
    return out[0]


def test_pinning_binds_the_thread_and_the_threads_it_starts() -> None:
    cpu = min(os.sched_getaffinity(0))

    def pinned() -> tuple[set[int], set[int]]:
        pin_cpus([cpu])
        seen: list[set[int]] = []
        child = threading.Thread(target=lambda: seen.append(os.sched_getaffinity(0)))
        child.start()
        child.join()
        return os.sched_getaffinity(0), seen[0]

    assert _in_thread(pinned) == ({cpu}, {cpu})


def test_process_children_get_back_the_startup_cpus() -> None:
    all_cpus = os.sched_getaffinity(0)
    if len(all_cpus) < 2:
        pytest.skip("needs two CPUs to tell pinned from unpinned")

    def spawn() -> set[int]:
        pin_cpus([min(all_cpus)])
        child = ProcessChild(SLEEPER, name="affinity")
        try:
            return os.sched_getaffinity(child.pid)
        finally:
            child.kill()
            child.exit_link.wait(timeout=5)

    assert _in_thread(spawn) == all_cpus


def test_pinning_to_an_unavailable_cpu_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"node\.cpus"):
        pin_cpus([max(os.sched_getaffinity(0)) + 1000])


@pytest.mark.slow
def test_a_node_configured_with_cpus_runs_pinned(tmp_path: Path) -> None:
    cpu = min(os.sched_getaffinity(0))
    file = tmp_path / "pinned.toml"
    file.write_text(
        f"[node]\ncpus = [{cpu}]\n\n[nats]\nenabled = false\n\n[http]\nenabled = false\n\n"
        '[[pools]]\nagent = "actors:PingAgent"\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "bridges", "run", "--config", str(file), "--duration", "0.1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert f"pinned to CPUs [{cpu}]" in out.stdout
