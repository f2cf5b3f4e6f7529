#!/usr/bin/env bash
# The one prepared GPU validation run of softdec (README "GPU validation"), in at most ~8
# minutes on a 16-core machine with one GPU, a CUDA torch, nvcc, cmake, ninja and pybind11
# installed, and no network:
#   1. build the CUDA backend in place for the local GPU's arch only (e.g. 90a on an H200),
#      with every core, plus the launch-resource report of that build
#      (tools/check_launch_resources.py);
#   2. the CUDA tests written as CUDA == CPU checks (pytest -m cuda -k test_cuda_, a per-test
#      timeout);
#   3. the CUDA benchmark, quick, without torch.compile baselines: on CUDA --quick keeps the DESIGN
#      shapes of the issue-17 rows (sample plain / filtered at B = 64, soft_mixture B in {1, 8, 64}
#      at D = 3584, verify B = 64, sparse decode page and token mode at N = 32768), each with time,
#      GB/s and the fraction of the device-to-device copy bandwidth measured in the same run, and
#      the FlashInfer columns when flashinfer imports (its version goes to machine.txt; a FlashInfer
#      without prebuilt kernels JIT-compiles them in its first timed call, inside this phase's limit);
#      bench-cuda.json is rewritten after every row, so a phase stopped by its limit keeps its rows;
#   4. in the time left: the device="cuda" instances of the device-parametrized tests (also
#      marked cuda), then the CPU tests.
# Every phase runs under `timeout`; everything is written to OUT, nothing is hidden:
#   summary.txt  machine.txt  build.log  tests.log (all pytest output)  tests-cuda.xml
#   tests-device.xml  bench-cuda.json  bench-cuda.txt           (8 files)
# GPU_CHECK_SKIP_BUILD=1 with --dry skips the build and tests the installed softdec (CI).
#
#   usage: bench/gpu_check.sh [--dry] OUT     (or OUT=/abs/dir bench/gpu_check.sh)
#
# OUT is made absolute against the directory the script is called from. The nvidia-cutlass
# headers come from the installed package, or from a wheel in .whl/ (installed into
# /tmp/softdec-site). --dry (or GPU_CHECK_DRY=1) runs every phase on a machine without a GPU:
# a CPU-only in-place build (build/dev, as `make dev`), the CUDA tests collected and skipped,
# the CPU benchmark on one small family, and one test file for phase 4: it checks this script.
# Time limits (seconds) can be changed through the environment: GPU_CHECK_DEADLINE (480),
# GPU_CHECK_BUILD_S (210; 900 when dry), GPU_CHECK_TESTS_S (170), GPU_CHECK_BENCH_S (90), GPU_CHECK_TEST_TIMEOUT (90).
set -uo pipefail

CALLER_PWD=$(pwd)
DRY=${GPU_CHECK_DRY:-0}
OUT_ARG=${OUT:-}
for a in "$@"; do
  case "$a" in
    --dry) DRY=1 ;;
    -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
    -*) echo "gpu_check: unknown option $a" >&2; exit 2 ;;
    *) OUT_ARG=$a ;;
  esac
done
[ "$DRY" = 0 ] || DRY=1
cd "$(dirname "$0")/.." || exit 2
REPO=$(pwd)
if [ -z "$OUT_ARG" ]; then
  OUT_ARG=/tmp/softdec-gpu-check-$(date +%Y%m%d-%H%M%S)
fi
case "$OUT_ARG" in
  /*) OUTDIR=$OUT_ARG ;;
  *) OUTDIR=$CALLER_PWD/$OUT_ARG ;;
esac
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)

PY=${PYTHON:-python3}
# a relative interpreter path (.venv/bin/python) is made absolute: the phases run in other folders
case "$PY" in /*) ;; */*) PY="$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")" ;; esac
JOBS=$(nproc 2>/dev/null || echo 4)
export CMAKE_BUILD_PARALLEL_LEVEL=$JOBS MAX_JOBS=$JOBS PYTHONUNBUFFERED=1
DEADLINE=${GPU_CHECK_DEADLINE:-480}
BUILD_S=${GPU_CHECK_BUILD_S:-$([ "$DRY" = 1 ] && echo 900 || echo 210)}
TESTS_S=${GPU_CHECK_TESTS_S:-170}
BENCH_S=${GPU_CHECK_BENCH_S:-90}
TEST_TIMEOUT=${GPU_CHECK_TEST_TIMEOUT:-90}
SUMMARY=$OUTDIR/summary.txt
START=$(date +%s)
FAILED=0

elapsed() { echo $(( $(date +%s) - START )); }
say() { echo "[gpu_check $(elapsed)s] $*" | tee -a "$SUMMARY"; }
# phase NAME RC SECONDS: one summary line; a non-zero rc fails the run
phase_done() {
  local what="ok"
  [ "$2" = 0 ] || { what="FAILED (exit $2$( [ "$2" = 124 ] && echo ', timed out'))"; FAILED=1; }
  say "$1: $what in $3s"
}

: > "$SUMMARY"
say "softdec GPU check: repo $REPO, out $OUTDIR, dry=$DRY, $JOBS cores, deadline ${DEADLINE}s"

# ---------------------------------------------------------------- machine
{
  echo "date: $(date -u)"
  echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo 'unknown (no git)')"
  echo "cores: $JOBS"; uname -a
  if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi; else echo "nvidia-smi: not found"; fi
  if command -v nvcc >/dev/null 2>&1; then nvcc --version; else echo "nvcc: not found"; fi
  "$PY" - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, "capability", f"{p.major}.{p.minor}", "sms", p.multi_processor_count,
          "memory GiB", round(p.total_memory / 2**30, 1))
try:
    import flashinfer
    print("flashinfer", getattr(flashinfer, "__version__", "unknown"), "(the bench's FlashInfer columns)")
except Exception as e:
    print("flashinfer: not importable, the bench has no FlashInfer columns:", type(e).__name__)
EOF
} > "$OUTDIR/machine.txt" 2>&1
cat "$OUTDIR/machine.txt"

ARCH=""
if [ "$DRY" = 0 ]; then
  ARCH=$("$PY" -c "import torch; M, m = torch.cuda.get_device_capability(); print(f'{M}{m}' + ('a' if M >= 9 else ''))") || {
    say "no CUDA device visible to $PY (torch.cuda.get_device_capability failed); use --dry on a machine without a GPU"
    exit 1
  }
fi

# nvidia-cutlass: the installed package, or the carried wheel
if ! "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('cutlass_library') is None)"; then
  if ls "$REPO"/.whl/nvidia_cutlass-*.whl >/dev/null 2>&1; then
    say "installing the carried nvidia-cutlass wheel into /tmp/softdec-site"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/softdec-site \
      "$REPO"/.whl/nvidia_cutlass-*.whl 2>&1 | tee -a "$SUMMARY"
    export PYTHONPATH=/tmp/softdec-site${PYTHONPATH:+:$PYTHONPATH}
  else
    say "nvidia-cutlass not installed and no .whl/nvidia_cutlass-*.whl: the tensor-core prefill is not built"
  fi
fi

# ---------------------------------------------------------------- 1. build
t0=$(date +%s)
if [ "$DRY" = 1 ] && [ "${GPU_CHECK_SKIP_BUILD:-0}" = 1 ]; then
  say "build: skipped (dry, GPU_CHECK_SKIP_BUILD=1): the installed softdec is tested"
  "$PY" -c "import json, softdec; print(json.dumps(softdec.info()))" 2>&1 | tee -a "$OUTDIR/machine.txt" |
    tee "$OUTDIR/build.log"
  rc=${PIPESTATUS[0]}
  phase_done "import softdec" "$rc" 0
  [ "$rc" = 0 ] || exit 1
  BUILD=$OUTDIR
elif [ "$DRY" = 1 ]; then
  BUILD=$REPO/build/dev
  say "build: CPU only (dry), in place, $BUILD"
  CMAKE_ARGS=(-DSOFTDEC_CUDA=OFF)
else
  BUILD=$REPO/build/gpu-check
  say "build: CUDA for sm_$ARCH only, in place, $BUILD, $JOBS jobs"
  CMAKE_ARGS=(-DSOFTDEC_CUDA=ON "-DSOFTDEC_CUDA_ARCHS=$ARCH" -DSOFTDEC_CUDA_RESOURCE_REPORT=ON)
fi
if [ -z "${CMAKE_ARGS+x}" ]; then :; else
  PYEXE=$(command -v "$PY")
  timeout "$BUILD_S" bash -c '
    cmake -S "$1" -B "$2" -G Ninja -DSOFTDEC_INPLACE=ON "-DPython_EXECUTABLE=$3" "${@:5}" &&
    cmake --build "$2" -j "$4"' _ "$REPO" "$BUILD" "$PYEXE" "$JOBS" "${CMAKE_ARGS[@]}" 2>&1 | tee "$OUTDIR/build.log"
  rc=${PIPESTATUS[0]}
  phase_done build "$rc" $(( $(date +%s) - t0 ))
  if [ "$rc" != 0 ]; then
    say "the build failed: see build.log; nothing else can run"
    exit 1
  fi
  export PYTHONPATH=$REPO/python${PYTHONPATH:+:$PYTHONPATH}
  (cd /tmp && "$PY" -c "import json, softdec; print(json.dumps(softdec.info()))") 2>&1 | tee -a "$OUTDIR/machine.txt"
fi
if [ "$DRY" = 0 ]; then
  "$PY" -c "import softdec, sys; sys.exit('cuda' not in softdec.info()['backends'])" ||
    { say "the build has no CUDA backend (softdec.info()['backends'] lacks cuda)"; FAILED=1; }
  # launch resources of the kernels just built (registers x threads, spills, stack)
  "$PY" "$REPO/tools/check_launch_resources.py" "$BUILD" 2>&1 | tee -a "$OUTDIR/build.log"
  phase_done "launch resources (sm_$ARCH)" "${PIPESTATUS[0]}" 0
fi

# ---------------------------------------------------------------- 2. CUDA tests
PYTEST_TIMEOUT=()
if "$PY" -c "import pytest_timeout" >/dev/null 2>&1; then
  PYTEST_TIMEOUT=(--timeout "$TEST_TIMEOUT" --timeout-method thread)
else
  say "pytest-timeout is not installed: no per-test timeout (the phase timeout still applies)"
fi
: > "$OUTDIR/tests.log"
# pytest_run LIMIT JUNIT ARGS...: one pytest run in tests/, its output appended to tests.log
pytest_run() {
  local limit=$1 junit=$2
  shift 2
  echo "== pytest $*" | tee -a "$OUTDIR/tests.log"
  (cd "$REPO/tests" && timeout "$limit" "$PY" -m pytest -q -ra -p no:cacheprovider "${PYTEST_TIMEOUT[@]}" \
    ${junit:+"--junitxml=$junit"} "$@") 2>&1 | tee -a "$OUTDIR/tests.log"
  return "${PIPESTATUS[0]}"
}
t0=$(date +%s)
say "tests: pytest -m cuda -k test_cuda_ (phase limit ${TESTS_S}s${PYTEST_TIMEOUT:+, ${TEST_TIMEOUT}s a test})"
pytest_run "$TESTS_S" "$OUTDIR/tests-cuda.xml" -m cuda -k test_cuda_ .
phase_done "CUDA tests (CUDA == CPU)" "$?" $(( $(date +%s) - t0 ))

# ---------------------------------------------------------------- 3. benchmark
t0=$(date +%s)
if [ "$DRY" = 1 ]; then
  BENCH=(--device cpu --quick --no-compile --only philox --rounds 1 --budget 0.2)
else
  # about 26 rows; --budget 0.15: each fast callable ~0.2 s (a GPU kernel of up to a few ms gets
  # dozens of timed calls); slow eager references are timed by one call
  BENCH=(--device cuda --quick --no-compile --rounds 1 --budget 0.15)
fi
say "bench: softdec bench ${BENCH[*]} (limit ${BENCH_S}s)"
(cd "$REPO" && timeout "$BENCH_S" "$PY" -m softdec bench "${BENCH[@]}" --json "$OUTDIR/bench-cuda.json" \
  --plot "${TMPDIR:-/tmp}/softdec-gpu-check-bench.png") 2>&1 | tee "$OUTDIR/bench-cuda.txt"
phase_done bench "${PIPESTATUS[0]}" $(( $(date +%s) - t0 ))

# ---------------------------------------------------------------- 4. the rest, in the time left
# (optional: a phase the deadline stops is reported, not failed; a failing test fails the run)
rest_phase() {  # NAME JUNIT ARGS...
  local name=$1 junit=$2 left rc t0
  shift 2
  left=$(( DEADLINE - $(elapsed) - 10 ))
  if [ "$left" -lt 30 ]; then
    say "$name: skipped, ${left}s left before the deadline"
    return
  fi
  t0=$(date +%s)
  say "$name: pytest $* in the ${left}s left"
  pytest_run "$left" "$junit" "$@"
  rc=$?
  if [ "$rc" = 124 ]; then
    say "$name: stopped at the deadline after $(( $(date +%s) - t0 ))s (optional; not a failure)"
  elif [ "$rc" = 5 ]; then
    say "$name: no tests selected (as without a GPU)"
  else
    phase_done "$name" "$rc" $(( $(date +%s) - t0 ))
  fi
}
if [ "$DRY" = 1 ]; then
  rest_phase "device-parametrized CUDA tests" "$OUTDIR/tests-device.xml" -m cuda -k "not test_cuda_" test_philox.py
  rest_phase "CPU tests" "" -m "not cuda" -x test_philox.py
else
  rest_phase "device-parametrized CUDA tests" "$OUTDIR/tests-device.xml" -m cuda -k "not test_cuda_" .
  rest_phase "CPU tests" "" -m "not cuda" .
fi

say "done in $(elapsed)s: $([ "$FAILED" = 0 ] && echo PASSED || echo FAILED); results in $OUTDIR"
exit "$FAILED"
