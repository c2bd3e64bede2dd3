#!/usr/bin/env bash
# The GPU kit's CPU dry run (CI): build the kit, install its wheels into a fresh
# CPython 3.12 target, run bench/gpu/run.sh --dry-run, check its summary.
#
#   bash bench/gpu/dry_run.sh
#
# Wheels are cached under AF_GPU_KIT_CACHE (default ~/.cache/actorfleet/gpu-kit): a
# warm run needs no network. Without a CPython 3.12 here it dry-runs with `python`
# and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

# The prebuilt extension travels too when build_ext.py has left one in the cache.
ext="$(python -c 'from bench.gpu.kit import EXT_NAME, cache_dir; print(cache_dir() / "ext" / EXT_NAME)')"
if [ -f "$ext" ]; then python bench/gpu/kit.py --ext; else python bench/gpu/kit.py; fi
python312="$(python -c 'from bench.gpu.kit import find_python312; print(find_python312() or "")')"
if [ -z "$python312" ]; then
  python312=python
  echo "no CPython 3.12 here: the dry run installs into $(python --version 2>&1) instead"
fi
out="$(mktemp -d "${TMPDIR:-/tmp}/af-gpu-dry.XXXXXX")"
trap 'rm -rf "$out"' EXIT
OUT="$out" AF_GPU_PYTHON="$python312" AF_GPU_BUDGET_S=300 bash bench/gpu/run.sh --dry-run

expected=$'env\tok\ninstall\tok'
for step in ext model tests bench; do
  expected+=$'\n'"$step"$'\tskipped: dry run, needs a CUDA GPU'
done
actual="$(awk 'NR > 2 && NF >= 3 { s = $3; for (i = 4; i <= NF; i++) s = s " " $i; print $1 "\t" s }' "$out/summary.txt" | head -6)"
if [ "$actual" != "$expected" ]; then
  echo "the dry run's steps are not what they should be:" >&2
  diff <(echo "$expected") <(echo "$actual") >&2 || true
  exit 1
fi
echo "GPU kit dry run: 2 passed, 0 failed, 4 skipped (they need a CUDA GPU)"
