"""How long the `actorfleet` command takes to start, beside bare Python and curl.

    python bench/cli.py [--rounds N]

Wall time of `actorfleet --help`, and of `actorfleet send` to a port where
nothing listens (all of its own work, none of a node's), against `python
-c pass` (the interpreter's start) and `curl` to the same port. Medians of
N rounds, interleaved.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence


def wall(argv: Sequence[str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    rounds = parser.parse_args().rounds
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"  # closed: nothing listens
    command = shutil.which("actorfleet") or "actorfleet"
    cases = {
        "python -c pass": [sys.executable, "-c", "pass"],
        "actorfleet --help": [command, "--help"],
        "actorfleet send (no node)": [command, "send", "support", "{}", "--url", url],
    }
    if shutil.which("curl"):
        cases["curl (no node)"] = ["curl", "-s", "-X", "POST", f"{url}/v1/agents/support"]
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, argv in cases.items():
            times[name].append(wall(argv))
    print(f"{'command':<28} {'median s':>9}")
    for name, samples in times.items():
        print(f"{name:<28} {statistics.median(samples):>9.3f}")


if __name__ == "__main__":
    main()
