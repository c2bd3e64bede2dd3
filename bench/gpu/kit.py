"""The GPU kit: the wheels a device machine lacks, gathered into one folder to carry.

    python bench/gpu/kit.py [--ext] [--offline] [--out .gpu-kit]

A device machine has no network: whatever the project, the gpu extra, the
exllamav2 converter and the GPU tests need beyond its image
(`device-packages.txt`) travels with the working tree, at most 64 MiB in all.
This downloads the wheels `wheels.txt` pins (CPython 3.12, manylinux <= 2.28
x86_64: torch 2.11's own wheel is manylinux_2_28, so the image's glibc runs
them) into a cache (`AF_GPU_KIT_CACHE`, default ~/.cache/actorfleet/gpu-kit),
builds the wheel of a pinned package that ships only a source archive,
checks that every need of these wheels and of `pyproject.toml` is met by
the kit or the image, copies them into `--out` (default `.gpu-kit/` in the
repository, ignored by git) and measures the working tree plus the kit
against the limit. `--ext` adds the prebuilt exllamav2 extension that
`build_ext.py` leaves in the cache, gzipped. `--offline` uses the cache only.

The folder's `MANIFEST.txt` lists what it holds; `bench/gpu/run.sh` runs it
on the device (see docs/gpu.md).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Final

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE: Final = Path(__file__).resolve().parent
REPO: Final = HERE.parents[1]
WHEELS_FILE: Final = HERE / "wheels.txt"
DEVICE_FILE: Final = HERE / "device-packages.txt"
KIT_DIR: Final = REPO / ".gpu-kit"
EXT_NAME: Final = "exllamav2_ext.so"
MIB: Final = 2**20
LIMIT_MIB: Final = 64.0
# Room left for the working tree to grow between a kit's build and its use.
MARGIN_MIB: Final = 4.0
OVER_IMAGE: Final = "over the image:"
GIT: Final = shutil.which("git") or "git"
PYTHON: Final = "3.12"
# The device: CPython 3.12.3 on x86-64 Linux (KINDS.md's pip list).
DEVICE_MARKERS: Final = {
    "python_version": PYTHON,
    "python_full_version": "3.12.3",
    "implementation_name": "cpython",
    "implementation_version": "3.12.3",
    "platform_python_implementation": "CPython",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "sys_platform": "linux",
    "os_name": "posix",
}
MANYLINUX_MAX: Final = 28
PLATFORMS: Final = (
    *(f"manylinux_2_{n}_x86_64" for n in range(MANYLINUX_MAX, 16, -1)),
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
# The test pins of pyproject's dev extra that the GPU run uses.
TEST_PINS: Final = ("pytest", "pytest-asyncio", "pytest-timeout")


@dataclass(frozen=True)
class Pin:
    """One line of wheels.txt."""

    name: str
    version: str
    why_over_image: str | None


def cache_dir() -> Path:
    """Where downloaded wheels and the extension's build live between runs."""
    default = Path.home() / ".cache" / "actorfleet" / "gpu-kit"
    path = Path(os.environ.get("AF_GPU_KIT_CACHE", default))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_cache() -> Path:
    """The cache's folder of wheels."""
    path = cache_dir() / "wheels"
    path.mkdir(parents=True, exist_ok=True)
    return path


def pins() -> dict[str, Pin]:
    """wheels.txt, by canonical name.

    Raises:
        SystemExit: If a line is not `name==version` or a name is pinned twice.
    """
    found: dict[str, Pin] = {}
    for number, raw in enumerate(WHEELS_FILE.read_text(encoding="utf-8").splitlines(), 1):
        line, _, comment = raw.partition("#")
        if not line.strip():
            continue
        name, sep, version = line.strip().partition("==")
        if not sep or not name or not version:
            msg = f"{WHEELS_FILE.name}:{number}: not name==version: {raw!r}"
            raise SystemExit(msg)
        key = canonicalize_name(name)
        if key in found:
            msg = f"{WHEELS_FILE.name}:{number}: {name} is pinned twice"
            raise SystemExit(msg)
        comment = comment.strip()
        why = comment[len(OVER_IMAGE) :].strip() if comment.startswith(OVER_IMAGE) else None
        found[key] = Pin(name=key, version=version, why_over_image=why)
    return found


def pinned(name: str) -> str:
    """The version wheels.txt pins for `name`."""
    return pins()[canonicalize_name(name)].version


def device_packages() -> dict[str, Version | None]:
    """The image's packages, with the version where it is known."""
    found: dict[str, Version | None] = {}
    for raw in DEVICE_FILE.read_text(encoding="utf-8").splitlines():
        line = raw.partition("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = Version(version) if version else None
    return found


def find_python312() -> str | None:
    """A CPython 3.12 interpreter here (PATH, pyenv, uv), or None."""
    candidates = [shutil.which(f"python{PYTHON}")]
    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        root = subprocess.run([pyenv, "root"], capture_output=True, text=True, check=False)
        versions = Path(root.stdout.strip()) / "versions"
        candidates += [str(p) for p in sorted(versions.glob(f"{PYTHON}.*/bin/python{PYTHON}"))]
    uv = shutil.which("uv")
    if uv is not None:
        found = subprocess.run(
            [uv, "python", "find", "--no-python-downloads", PYTHON],
            capture_output=True,
            text=True,
            check=False,
        )
        candidates.append(found.stdout.strip() or None)
    for candidate in candidates:
        if candidate and _is_python312(candidate):
            return candidate
    return None


def _is_python312(python: str) -> bool:
    probe = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    return probe.returncode == 0 and probe.stdout.strip() == PYTHON


def cached_wheel(pin: Pin) -> Path | None:
    """The cache's wheel of `pin`, if it has one."""
    for path in wheel_cache().glob("*.whl"):
        name, version, _build, _tags = parse_wheel_filename(path.name)
        if name == pin.name and version == Version(pin.version):
            return path
    return None


def fetch(pin: Pin, *, offline: bool) -> Path:
    """The wheel of `pin`: from the cache, else downloaded, else built from its sdist.

    Raises:
        SystemExit: If it cannot be had.
    """
    found = cached_wheel(pin)
    if found is not None:
        return found
    if offline:
        msg = f"{pin.name}=={pin.version} is not in {wheel_cache()} (--offline)"
        raise SystemExit(msg)
    spec = f"{pin.name}=={pin.version}"
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = [
        *("download", "--quiet", "--no-deps", "--only-binary=:all:"),
        *("--python-version", PYTHON, "--implementation", "cp", *platforms),
        *("--dest", str(wheel_cache()), spec),
    ]
    if _pip(download).returncode != 0:
        _build_pure_wheel(spec)
    found = cached_wheel(pin)
    if found is None:
        msg = f"no wheel of {spec} for CPython {PYTHON} on manylinux x86_64"
        raise SystemExit(msg)
    return found


def _pip(args: list[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _build_pure_wheel(spec: str) -> None:
    """Build the wheel of a package that ships only an sdist; it must be pure Python."""
    with tempfile.TemporaryDirectory() as scratch:
        built = _pip(["wheel", "--quiet", "--no-deps", "--no-binary=:all:", "-w", scratch, spec])
        wheels = list(Path(scratch).glob("*.whl"))
        if built.returncode != 0 or len(wheels) != 1:
            msg = f"cannot build a wheel of {spec}: {built.stderr.strip()[-500:]}"
            raise SystemExit(msg)
        [wheel] = wheels
        _name, _version, _build, tags = parse_wheel_filename(wheel.name)
        if any(tag.abi != "none" or tag.platform != "any" for tag in tags):
            msg = f"{wheel.name} is not pure Python: it cannot be built for the device here"
            raise SystemExit(msg)
        shutil.move(str(wheel), wheel_cache() / wheel.name)


def requires(wheel: Path, extras: Iterable[str]) -> list[Requirement]:
    """What the wheel's METADATA asks for on the device, with `extras`."""
    with zipfile.ZipFile(wheel) as archive:
        [meta] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        message = Parser().parsestr(archive.read(meta).decode("utf-8"))
    wanted = ["", *extras]
    needs = []
    for text in message.get_all("Requires-Dist") or []:
        requirement = Requirement(text)
        marker = requirement.marker
        if marker is None or any(_applies(marker, extra) for extra in wanted):
            needs.append(requirement)
    return needs


def _applies(marker: Marker, extra: str) -> bool:
    return marker.evaluate({**DEVICE_MARKERS, "extra": extra})


def project_needs() -> list[Requirement]:
    """pyproject's dependencies, the gpu extra and the test pins the GPU run uses."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    optional = project["optional-dependencies"]
    dev = [Requirement(r) for r in optional["dev"]]
    tests = [r for r in dev if canonicalize_name(r.name) in TEST_PINS]
    roots = [Requirement(r) for r in [*project["dependencies"], *optional["gpu"]]]
    return [r for r in [*roots, *tests] if r.marker is None or _applies(r.marker, "")]


def closure_problems(
    wheels: dict[str, Path], pinned_pins: dict[str, Pin], device: dict[str, Version | None]
) -> list[str]:
    """Every need that neither the kit nor the image meets, and every unexplained overlap."""
    problems: list[str] = []
    for name, pin in pinned_pins.items():
        if name in device and pin.why_over_image is None:
            problems.append(f"{name} is on the image: carry it only with a reason ({OVER_IMAGE})")
        if name not in device and pin.why_over_image is not None:
            problems.append(f"{name} is marked '{OVER_IMAGE}' but is not on the image")
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [("pyproject.toml", r) for r in project_needs()]
    while todo:
        who, requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        if name in wheels:
            version = Version(pinned_pins[name].version)
        elif name in device:
            version = device[name] or Version("0")
            if device[name] is None:
                continue  # the image has it; its version is not known
        else:
            problems.append(f"{who} needs {requirement}: neither carried nor on the image")
            continue
        if version not in requirement.specifier:
            problems.append(f"{who} needs {requirement}, but {name} {version} is what runs")
        key = (name, frozenset(requirement.extras))
        if name in wheels and key not in seen:
            seen.add(key)
            todo.extend((name, r) for r in requires(wheels[name], requirement.extras))
    unused = set(wheels) - {name for name, _extras in seen}
    problems += [f"{name} is carried but nothing needs it" for name in sorted(unused)]
    return problems


def tree_bytes() -> int:
    """What travels without `carry`: tracked and untracked-but-not-ignored files."""
    listed = subprocess.run(
        [GIT, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    total = 0
    for name in filter(None, listed):
        path = REPO / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def folder_bytes(folder: Path) -> int:
    """Bytes of the files under `folder`."""
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def assemble(out: Path, wheels: dict[str, Path], ext: Path | None) -> None:
    """A fresh `out`: wheels/, ext/exllamav2_ext.so.gz when given, MANIFEST.txt."""
    if out.exists():
        shutil.rmtree(out)
    (out / "wheels").mkdir(parents=True)
    lines = [f"# the GPU kit, built {time.strftime('%Y-%m-%d %H:%M:%S %Z')} by bench/gpu/kit.py"]
    for name in sorted(wheels):
        target = out / "wheels" / wheels[name].name
        shutil.copy2(wheels[name], target)
        lines.append(_manifest_line(target, out))
    if ext is not None:
        (out / "ext").mkdir()
        target = out / "ext" / f"{EXT_NAME}.gz"
        with ext.open("rb") as source, gzip.open(target, "wb", compresslevel=9) as packed:
            shutil.copyfileobj(source, packed)
        lines.append(_manifest_line(target, out))
    (out / "MANIFEST.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _manifest_line(path: Path, root: Path) -> str:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return f"{path.stat().st_size:>10}  {digest}  {path.relative_to(root)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=KIT_DIR)
    parser.add_argument("--ext", action="store_true", help="carry build_ext.py's extension")
    parser.add_argument("--offline", action="store_true", help="use the cache only")
    args = parser.parse_args()
    start = time.monotonic()
    pinned_pins = pins()
    wheels = {name: fetch(pin, offline=args.offline) for name, pin in pinned_pins.items()}
    problems = closure_problems(wheels, pinned_pins, device_packages())
    if problems:
        print("the kit does not add up:", *problems, sep="\n  ", file=sys.stderr)
        raise SystemExit(1)
    ext = cache_dir() / "ext" / EXT_NAME
    if args.ext and not ext.is_file():
        msg = f"--ext: no {ext}; run bench/gpu/build_ext.py first"
        raise SystemExit(msg)
    assemble(args.out, wheels, ext if args.ext else None)
    tree, kit = tree_bytes(), folder_bytes(args.out)
    total = (tree + kit) / MIB
    carried = f"{len(wheels)} wheels" + (" and the prebuilt extension" if args.ext else "")
    print(
        f"kit {args.out}: {carried}, {kit / MIB:.1f} MiB; working tree "
        f"{tree / MIB:.1f} MiB; together {total:.1f} of {LIMIT_MIB:.0f} MiB "
        f"({time.monotonic() - start:.1f} s)"
    )
    if total > LIMIT_MIB - MARGIN_MIB:
        msg = f"{total:.1f} MiB leaves less than {MARGIN_MIB:.0f} MiB under the carry limit"
        raise SystemExit(msg)


if __name__ == "__main__":
    main()
