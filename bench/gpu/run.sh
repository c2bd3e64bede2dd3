#!/usr/bin/env bash
# The GPU proof in one device call: versions, the kit's wheels, exllamav2's extension,
# the test model, the GPU tests and bench/gpu_inference.py, each step under its own
# timeout and all inside one budget, with a summary in $OUT whatever happens.
#
#   bash bench/gpu/run.sh            on the device, run with carry [".gpu-kit"]
#   bash bench/gpu/run.sh --dry-run  here: the same steps in order; those that need a
#                                    GPU are skipped, saying so (bench/gpu/dry_run.sh)
#
# Environment (all optional):
#   OUT              where the results go (the device sets it; else a new temp folder)
#   AF_GPU_BUDGET_S  seconds for the whole run (default 540: under the 10-minute call)
#   AF_GPU_STEPS     the steps to run, in their fixed order (default: all of them; env
#                    and install always run, and a step runs only after those it needs)
#   AF_GPU_KIT       the kit folder (default .gpu-kit, built by bench/gpu/kit.py)
#   AF_GPU_PYTHON    the interpreter (default python3: the device's, which has torch)
#
# $OUT gets summary.txt (also printed at the end), steps.log (every step's output),
# env.txt, junit-gpu.xml, bench.txt and, after a JIT build, exllamav2_ext.so.gz
# (for the next try's kit: docs/gpu.md).
set -uo pipefail

STEPS_ALL=(env install ext model tests bench)
declare -A LIMIT=([env]=30 [install]=60 [ext]=330 [model]=150 [tests]=240 [bench]=180)
declare -A LEAST=([env]=5 [install]=10 [ext]=30 [model]=40 [tests]=60 [bench]=40)
declare -A NEEDS=([env]="" [install]="" [ext]="install" [model]="ext" [tests]="model" [bench]="model")
declare -A GPU_ONLY=([ext]=1 [model]=1 [tests]=1 [bench]=1)
RESERVE_S=15 # for the summary and the copies at the end
EXT_BACK_MAX=$((15 * 1024 * 1024))
GPU_TESTS=(
  tests/inference/test_gpu.py
  tests/inference/test_exllamav2.py
  tests/inference/test_exllamav2_engine.py
  tests/inference/test_exllamav2_loading.py
)
# Warnings from these packages' own code are shown, not raised: the suite's
# filterwarnings = error is for the project's code.
THIRD_PARTY='(torch|triton|exllamav2|transformers|safetensors|tokenizers|huggingface_hub|numpy|pandas|fastparquet|lmformatenforcer|pydantic|interegular|importlib)'

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SELF="$REPO/bench/gpu/run.sh"

# -- one step, in its own process (run by the loop below under `timeout`) -----------------

step_env() {
  date -u
  uname -a
  echo "cores: $(nproc)"
  free -g 2>/dev/null | head -2
  df -h /tmp 2>/dev/null | tail -1
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
  else
    echo "nvidia-smi: not on this machine"
  fi
  command -v nvcc >/dev/null && nvcc --version | tail -2
  "$PY" -c 'import platform, sys; print(sys.executable, sys.version); print(platform.libc_ver())'
  "$PY" - <<'PY' 2>&1 || true
import importlib.metadata as md
for name in ("torch", "transformers", "tokenizers", "safetensors", "ninja", "pytest",
             "numpy", "pandas", "flash-attn", "anyio", "httpx", "uvloop"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name}: not installed")
try:
    import torch
    print("torch.cuda:", torch.version.cuda, "available:", torch.cuda.is_available())
    if torch.cuda.is_available():
        print("device:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
except ImportError as exc:
    print("torch:", exc)
PY
  "$PY" -m pip list --format=freeze 2>/dev/null | sed 's/^/pip: /' || true
}

step_install() {
  local wheels=("$KIT"/wheels/*.whl)
  [ -e "${wheels[0]}" ] || { echo "no wheels in $KIT/wheels: run bench/gpu/kit.py here" >&2; return 1; }
  echo "${#wheels[@]} wheels from $KIT"
  rm -rf "$SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --root-user-action=ignore --target "$SITE" "${wheels[@]}" || return 1
  local bin
  bin="$("$PY" -c 'import os, sys; print(os.path.dirname(sys.executable))')"
  {
    echo "export PYTHONPATH='$REPO:$SITE'\${PYTHONPATH:+:\$PYTHONPATH}"
    echo "export PATH='$SITE/bin:$bin'\${PATH:+:\$PATH}"
    echo "export TORCH_EXTENSIONS_DIR='$WORK/torch-extensions'"
    echo "export TORCH_CUDA_ARCH_LIST=9.0"
  } >>"$STATE"
  # shellcheck source=/dev/null
  source "$STATE"
  if [ -f "$KIT/ext/exllamav2_ext.so.gz" ]; then
    gzip -t "$KIT/ext/exllamav2_ext.so.gz" && echo "the kit carries a prebuilt extension" || return 1
  fi
  if [ "$DRY" = 1 ]; then
    # Here only the kit is installed, not the device's image: import what needs nothing more.
    "$PY" -c 'import cramjam, cryptography, jwt, msgspec, nacl, pydantic, pykka, redis, rpds, websockets; print("compiled wheels import on", __import__("sys").version.split()[0])'
  else
    "$PY" -c 'import actors, bridges, config, fastparquet, inference, lmformatenforcer, messages, pytest, pytest_asyncio, supervisors; print("the project imports; pytest", pytest.__version__)' || return 1
    "$PY" -c 'import bridges.nats._embedded as e; print("nats-server:", e.find_nats_server())'
  fi
}

step_ext() {
  # torch's headers include cuBLAS/cuSPARSE/cuSOLVER headers that a toolkit may lack;
  # torch's nvidia wheels ship them.
  local cuda_home headers
  cuda_home="$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")')"
  echo "CUDA_HOME: ${cuda_home:-none found}"
  if [ ! -f "$cuda_home/include/cublas_v2.h" ]; then
    headers="$("$PY" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("nvidia")
roots = [pathlib.Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
need = ("cusparse.h", "cublas_v2.h", "cublasLt.h", "cusolverDn.h")
print(":".join(sorted({str(h.parent) for r in roots for n in need for h in r.glob(f"*/include/{n}")})))
PY
)"
    echo "CPATH += $headers (torch's nvidia wheels)"
    echo "export CPATH='$headers'\${CPATH:+:\$CPATH}" >>"$STATE"
    # shellcheck source=/dev/null
    source "$STATE"
  fi
  if [ -f "$KIT/ext/exllamav2_ext.so.gz" ]; then
    mkdir -p "$WORK/ext"
    gunzip -c "$KIT/ext/exllamav2_ext.so.gz" >"$WORK/ext/exllamav2_ext.so"
    if PYTHONPATH="$WORK/ext:$PYTHONPATH" "$PY" -c 'import torch, exllamav2_ext'; then
      echo "export PYTHONPATH='$WORK/ext':\$PYTHONPATH" >>"$STATE"
      echo "extension: prebuilt (from the kit)" | tee "$WORK/ext-source"
    else
      echo "the kit's prebuilt extension does not load here: building it" >&2
    fi
  fi
  # shellcheck source=/dev/null
  source "$STATE"
  if [ ! -f "$WORK/ext-source" ]; then
    find "$TORCH_EXTENSIONS_DIR" -name lock -delete 2>/dev/null
    echo "extension: JIT build, MAX_JOBS=$(nproc), TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST"
    if ! MAX_JOBS="$(nproc)" "$PY" -c 'import exllamav2.ext'; then
      find "$TORCH_EXTENSIONS_DIR" -name lock -delete 2>/dev/null
      return 1
    fi
    echo "extension: JIT build" >"$WORK/ext-source"
  fi
  "$PY" -c 'import importlib.metadata as m, exllamav2.attn as a; print("exllamav2", m.version("exllamav2"), "paged attention:", a.has_flash_attn_with_paged)'
}

step_model() {
  "$PY" "$REPO/bench/make_test_model.py" "$WORK/model" || return 1
  echo "export AF_EXL2_MODEL_DIR='$WORK/model/exl2'" >>"$STATE"
  du -sh "$WORK/model/exl2"
}

step_tests() {
  cd "$REPO" || return 1
  # Plugins only by name: the image's own pytest plugins do not load beside the kit's pytest.
  PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 "$PY" -m pytest -p pytest_asyncio.plugin -p pytest_timeout \
    -p no:cacheprovider -m "not slow and not soak and not model" -ra \
    -W "default:::$THIRD_PARTY" --junitxml="$OUT/junit-gpu.xml" "${GPU_TESTS[@]}"
}

step_bench() {
  cd "$REPO" || return 1
  "$PY" bench/gpu_inference.py --quick --model "$AF_EXL2_MODEL_DIR" | tee "$OUT/bench.txt"
}

if [ "${1:-}" = "--step" ]; then
  # shellcheck source=/dev/null
  source "$STATE"
  "step_$2"
  exit $?
fi

# -- the run --------------------------------------------------------------------------------

DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
export DRY REPO
export PY="${AF_GPU_PYTHON:-python3}"
export KIT="${AF_GPU_KIT:-$REPO/.gpu-kit}"
case "$KIT" in /*) ;; *) KIT="$REPO/$KIT" ;; esac
export WORK
WORK="$(mktemp -d "${TMPDIR:-/tmp}/af-gpu.XXXXXX")"
export SITE="$WORK/site" STATE="$WORK/state.sh"
export OUT="${OUT:-$WORK/out}"
mkdir -p "$OUT"
: >"$STATE"
: >"$WORK/steps.tsv"
BUDGET_S="${AF_GPU_BUDGET_S:-540}"
read -r -a WANTED <<<"${AF_GPU_STEPS:-${STEPS_ALL[*]}}"
START=$SECONDS
CURRENT=""
began=$SECONDS
declare -A RESULT

record() { # step, status, seconds
  RESULT[$1]="$2"
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$WORK/steps.tsv"
  summarize >"$OUT/summary.txt" # kept current: a killed run still leaves one
}

summarize() {
  local mode="device"
  [ "$DRY" = 1 ] && mode="dry run"
  echo "GPU kit run ($mode): $((SECONDS - START)) s of a $BUDGET_S s budget; kit $KIT"
  printf '%-8s  %-7s  %s\n' step seconds status
  while IFS=$'\t' read -r name status seconds; do
    printf '%-8s  %7s  %s\n' "$name" "$seconds" "$status"
  done <"$WORK/steps.tsv"
  [ -f "$WORK/ext-source" ] && cat "$WORK/ext-source"
  grep -m1 -E '^NVIDIA|^device:' "$OUT/env.txt" 2>/dev/null | sed 's/^/GPU: /'
  if [ -f "$OUT/junit-gpu.xml" ]; then
    grep -o -m1 '<testsuite [^>]*' "$OUT/junit-gpu.xml" |
      grep -o -E '(tests|failures|errors|skipped|time)="[^"]*"' | tr '\n' ' ' | sed 's/^/tests: /'
    echo
  fi
  grep -h '^RESULT ' "$OUT/bench.txt" 2>/dev/null | sed 's/^/bench: /'
}

finish() {
  trap - EXIT TERM INT
  local name
  if [ -n "$CURRENT" ] && [ -z "${RESULT[$CURRENT]:-}" ]; then
    record "$CURRENT" "stopped while running (the run was ended)" "$((SECONDS - began))"
  fi
  for name in "${STEPS_ALL[@]}"; do
    [ -n "${RESULT[$name]:-}" ] || record "$name" "not reached (the run was ended)" 0
  done
  local built="$WORK/torch-extensions/exllamav2_ext/exllamav2_ext.so"
  if [ -f "$built" ] && grep -q JIT "$WORK/ext-source" 2>/dev/null; then
    gzip -9 -c "$built" >"$WORK/exllamav2_ext.so.gz"
    if [ "$(stat -c %s "$WORK/exllamav2_ext.so.gz")" -le "$EXT_BACK_MAX" ]; then
      cp "$WORK/exllamav2_ext.so.gz" "$OUT/"
    else
      echo "the built extension is over 15 MiB gzipped: not copied back" >>"$OUT/steps.log"
    fi
  fi
  summarize | tee "$OUT/summary.txt"
  case "$OUT" in "$WORK"/*) ;; *) [ "$DRY" = 1 ] && rm -rf "$WORK" ;; esac
}
trap finish EXIT
trap 'exit 143' TERM INT

wanted() { # env and install always run: every call gets a fresh machine
  local w
  [ "$1" = env ] || [ "$1" = install ] && return 0
  for w in "${WANTED[@]}"; do [ "$w" = "$1" ] && return 0; done
  return 1
}

for name in "${STEPS_ALL[@]}"; do
  if ! wanted "$name"; then
    record "$name" "skipped: not in AF_GPU_STEPS" 0
    continue
  fi
  if [ "$DRY" = 1 ] && [ -n "${GPU_ONLY[$name]:-}" ]; then
    record "$name" "skipped: dry run, needs a CUDA GPU" 0
    continue
  fi
  need="${NEEDS[$name]}"
  if [ -n "$need" ] && [ "${RESULT[$need]:-}" != ok ]; then
    record "$name" "skipped: needs $need, which did not succeed" 0
    continue
  fi
  left=$((BUDGET_S - (SECONDS - START) - RESERVE_S))
  if [ "$left" -lt "${LEAST[$name]}" ]; then
    record "$name" "skipped: ${left} s left, needs ${LEAST[$name]}" 0
    continue
  fi
  limit=$((left < LIMIT[$name] ? left : LIMIT[$name]))
  echo "== $name (at most $limit s)" | tee -a "$OUT/steps.log"
  CURRENT=$name
  began=$SECONDS
  if [ "$name" = env ]; then
    timeout -k 5 "$limit" bash "$SELF" --step env >"$OUT/env.txt" 2>&1
    rc=$?
    tail -n +1 "$OUT/env.txt" | grep -v '^pip: ' | tee -a "$OUT/steps.log"
  else
    timeout -k 5 "$limit" bash "$SELF" --step "$name" 2>&1 | tee -a "$OUT/steps.log"
    rc=${PIPESTATUS[0]}
  fi
  took=$((SECONDS - began))
  case "$rc" in
    0) status=ok ;;
    124 | 137) status="timed out after $limit s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ "$name" = env ] && status=ok # what it could not read, it says
  record "$name" "$status" "$took"
done
