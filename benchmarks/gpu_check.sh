#!/usr/bin/env bash
# The GPU check of minissl in one go, for a machine with a CUDA GPU, CuPy 14 (CUDA 13),
# Cython and PyTorch installed and no network:
#
#   bash benchmarks/gpu_check.sh            # logs in $OUT if set, else ./gpu-check-logs
#
# 1. builds the Cython kernels (in parallel) and installs minissl in editable mode,
# 2. runs tests/kernels (every CUDA kernel against its NumPy reference on the GPU and on
#    the CPU emulator, ops and a SimCLR step on "cuda", the no-device-to-host-copy guard),
# 3. runs the GPU benchmark beside PyTorch CUDA eager, with CUDA-graph replay (--graph).
# Each stage has its own time limit so the whole check ends within about 5 minutes. The exit
# status is 0 only if every stage passed. Without CuPy or a GPU, stages 2-3 are skipped
# (the tests then run on the emulator only) and the exit status is 3.
set -u -o pipefail
cd "$(dirname "$0")/.."
LOG="${OUT:-$PWD/gpu-check-logs}"
mkdir -p "$LOG"
PY="${PYTHON:-python3}"
T0=$(date +%s)
STATUS=0
SUMMARY="$LOG/summary.txt"
: > "$SUMMARY"

stage() {  # stage NAME SECONDS COMMAND...: run with a time limit, log, keep the tail
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout --kill-after=10 "$limit" "$@" > "$LOG/$name.log" 2>&1
    local rc=$?
    local t=$(( $(date +%s) - T0 ))
    tail -n 30 "$LOG/$name.log"
    echo "== $name: exit $rc, ${t}s since start" | tee -a "$SUMMARY"
    [ "$rc" -eq 0 ] || STATUS=1
    return "$rc"
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    "$PY" - <<'EOF'
import platform, numpy
print("python", platform.python_version(), "numpy", numpy.__version__)
try:
    import cupy
    print("cupy", cupy.__version__, "CUDA runtime", cupy.cuda.runtime.runtimeGetVersion())
    p = cupy.cuda.runtime.getDeviceProperties(0)
    print("device", p["name"].decode() if isinstance(p["name"], bytes) else p["name"])
except Exception as e:
    print("cupy: unavailable:", type(e).__name__, e)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.cuda.is_available())
except Exception as e:
    print("torch: unavailable:", type(e).__name__, e)
EOF
} 2>&1 | tee "$LOG/environment.txt"

JOBS=$(nproc 2>/dev/null || echo 4)
# Compile the extensions in place, in parallel (pip would build them again, one by one, in a
# temporary folder); then install in editable mode without building anything: MINISSL_ONLY
# names no kernel, so setup.py builds none, and the editable install uses the ones in place.
stage build 150 "$PY" setup.py build_ext --inplace -j "$JOBS"
stage install 90 env MINISSL_ONLY=_built_in_place_ "$PY" -m pip install --no-build-isolation \
    --no-deps --no-index -e .

HAVE_GPU=1
"$PY" -c "from minissl.backend import is_cuda_available as f; raise SystemExit(not f())" \
    || HAVE_GPU=0

# CI=true: the hypothesis "ci" profile (15 examples per test, derandomised).
stage tests 150 env CI=true "$PY" -m pytest -q -rs tests/kernels
if [ "$HAVE_GPU" -eq 1 ]; then
    stage bench 120 "$PY" benchmarks/bench_gpu.py --reps 20 --graph --json "$LOG/bench_gpu.json"
else
    echo "== bench: skipped (CuPy or a CUDA GPU is not available)" | tee -a "$SUMMARY"
fi

echo "== total $(( $(date +%s) - T0 ))s; logs in $LOG" | tee -a "$SUMMARY"
if [ "$HAVE_GPU" -eq 0 ]; then
    exit 3
fi
exit "$STATUS"
