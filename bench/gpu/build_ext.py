"""Build exllamav2's C++/CUDA extension for sm_90 here, for the device image's torch.

    python bench/gpu/build_ext.py [--jobs 1] [--timeout 1800]

The device image runs torch 2.11.0 built for CUDA 13.0 (the PyPI wheel). This
makes a Python 3.12 virtual environment under the kit's cache with that
torch and ninja (about 4.6 GB, downloaded once), unpacks the exllamav2
wheel the kit carries, and compiles its 47 sources exactly as exllamav2's
own JIT build does (`exllamav2/ext.py`: the same source list, `-Ofast`,
`-lineinfo -O3`), for `TORCH_CUDA_ARCH_LIST=9.0` only, with the nvcc at
`CUDA_HOME` (default /usr/local/cuda-13.0) and the CUDA headers of torch's
`nvidia` wheels. The result, `ext/exllamav2_ext.so` in the cache, is what
`build_kit.py --ext` carries: on the device, `import exllamav2_ext` finds it
and exllamav2 skips its JIT build.

It runs under `nice -n 19` with `MAX_JOBS` = `--jobs` (default 1): the
machine's two cores are shared. `--timeout` stops the compiler (the build
directory is kept, so a later run resumes where ninja stopped).
"""

from __future__ import annotations

import argparse
import ast
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Final

_HERE = Path(__file__).resolve().parent
sys.path[:] = [str(_HERE.parents[1]), *(p for p in sys.path if Path(p or ".").resolve() != _HERE)]

from bench.gpu.kit import cache_dir, find_python312, pinned, wheel_cache

TORCH: Final = "torch==2.11.0"
NINJA: Final = "ninja==1.13.0"
ARCH: Final = "9.0"
CUDA_HOME: Final = "/usr/local/cuda-13.0"
NAME: Final = "exllamav2_ext"
NICE: Final = shutil.which("nice") or "/usr/bin/nice"
# What exllamav2/ext.py passes to torch's `load`.
CFLAGS: Final = ("-Ofast",)
CUDA_CFLAGS: Final = ("-lineinfo", "-O3")


def sources(ext_py: Path) -> list[str]:
    """The `sources_` list of exllamav2's `ext.py`, as its JIT build compiles them."""
    tree = ast.parse(ext_py.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "sources_" for t in node.targets
        ):
            found = ast.literal_eval(node.value)
            return [str(s) for s in found]
    msg = f"no sources_ list in {ext_py}"
    raise SystemExit(msg)


def unpack_exllamav2(target: Path) -> Path:
    """The exllamav2 package folder, unpacked from the carried wheel."""
    version = pinned("exllamav2")
    [wheel] = sorted(wheel_cache().glob(f"exllamav2-{version}-*.whl"))
    if not (target / "exllamav2" / "ext.py").is_file():
        with zipfile.ZipFile(wheel) as archive:
            archive.extractall(target)
    return target / "exllamav2"


def ensure_venv(venv: Path) -> Path:
    """A Python 3.12 venv with the device's torch and ninja; its python."""
    python = venv / "bin" / "python"
    if not python.is_file():
        base = find_python312()
        if base is None:
            msg = "no Python 3.12 here: the extension must match the device's CPython 3.12"
            raise SystemExit(msg)
        subprocess.run([base, "-m", "venv", str(venv)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import torch, ninja"], capture_output=True, check=False
    )
    if probe.returncode != 0:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", TORCH, NINJA, "numpy"], check=True
        )
    return python


def build(python: Path, package: Path, build_dir: Path, jobs: int, timeout: float) -> Path:
    """Compile into `build_dir`; the built `.so`."""
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    headers = site / "nvidia" / "cu13" / "include"
    env = {
        **os.environ,
        "CUDA_HOME": os.environ.get("CUDA_HOME", CUDA_HOME),
        "TORCH_CUDA_ARCH_LIST": ARCH,
        "MAX_JOBS": str(jobs),
        "CPATH": os.pathsep.join(p for p in (str(headers), os.environ.get("CPATH", "")) if p),
        "PATH": os.pathsep.join((str(python.parent), os.environ.get("PATH", ""))),
    }
    source_dir = package / NAME
    paths = [str(source_dir / s) for s in sources(package / "ext.py")]
    code = (
        "import sys\n"
        "from torch.utils.cpp_extension import load\n"
        f"load(name={NAME!r}, sources={paths!r}, extra_include_paths=[{str(source_dir)!r}],"
        f" build_directory={str(build_dir)!r}, extra_cflags={list(CFLAGS)!r},"
        f" extra_cuda_cflags={list(CUDA_CFLAGS)!r}, verbose=True, is_python_module=False)\n"
    )
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "lock").unlink(missing_ok=True)  # left by a build that was stopped
    subprocess.run(
        [NICE, "-n", "19", str(python), "-c", code], env=env, check=True, timeout=timeout
    )
    built = build_dir / f"{NAME}.so"
    if not built.is_file():
        msg = f"the build ended without {built}"
        raise SystemExit(msg)
    return built


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=1800.0)
    args = parser.parse_args()
    cache = cache_dir()
    start = time.monotonic()
    python = ensure_venv(cache / "ext-venv")
    ready = time.monotonic()
    package = unpack_exllamav2(cache / "exllamav2-src")
    built = build(python, package, cache / "ext-build", args.jobs, args.timeout)
    target = cache / "ext" / f"{NAME}.so"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(built, target)
    done = time.monotonic()
    size = target.stat().st_size / 2**20
    print(f"venv {ready - start:.0f} s, build {done - ready:.0f} s: {target} ({size:.1f} MiB)")


if __name__ == "__main__":
    main()
