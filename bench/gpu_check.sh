#!/usr/bin/env bash
# GPU validation: on a machine with a CUDA torch, nvcc, cmake, ninja, pybind11 and
# scikit-build-core already installed (no network needed), build the CUDA backend,
# run the test suite (CUDA tests included) and the benchmarks on the GPU and CPU,
# and write everything into one folder.
#   usage: bench/gpu_check.sh [OUTDIR]     (default: bench/results/gpu-<time>)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
{
  echo "date: $(date -u)"; nvidia-smi || true; nvcc --version || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} > "$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt"

echo "== build (SOFTDEC_CUDA=ON)"
t0=$(date +%s)
SOFTDEC_CUDA=ON SOFTDEC_CUDA_ARCHS=${SOFTDEC_CUDA_ARCHS:-"80;90a"} \
  $PY -m pip install -v --no-build-isolation --no-deps --no-index . > "$OUT/build.log" 2>&1
rc=$?; echo "build exit $rc in $(( $(date +%s) - t0 ))s" | tee -a "$OUT/build.log"
[ $rc -eq 0 ] || { tail -50 "$OUT/build.log"; exit $rc; }
(cd /tmp && $PY -c "import softdec, json; print(json.dumps(softdec.info(), indent=1))") | tee "$OUT/info.json"

echo "== tests"
(cd tests && $PY -m pytest -q -ra -p no:cacheprovider --junitxml="../$OUT/tests.xml" . ) 2>&1 | tee "$OUT/tests.log" | tail -30

echo "== benchmarks (cuda)"
$PY -m softdec bench --device cuda --json "$OUT/bench-cuda.json" 2>/dev/null | tee "$OUT/bench-cuda.txt"
echo "== benchmarks (cpu, quick)"
$PY -m softdec bench --quick --json "$OUT/bench-cpu.json" 2>/dev/null | tee "$OUT/bench-cpu.txt"
echo "results in $OUT"
