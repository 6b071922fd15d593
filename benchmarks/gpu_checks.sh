#!/usr/bin/env bash
# The kernels issue's accelerator checks as one prepared run, for a session that is lent a GPU machine
# (a few minutes on an H200; the device tool's budget is 15 minutes for everything, so run this once, whole):
#   1. the kernel tests (tests/kernels) with the Pallas kernels compiled for the GPU (STEPJAX_PALLAS_COMPILED=1) against
#      their references, at the tolerances; the shard_map tests (8 fake CPU devices) and the cross-lowering
#      test (CPU-only by design) are left out;
#   2. flash attention forward and forward+backward vs jax.nn.dot_product_attention (cuDNN) at 4k, 8k and 16k tokens in
#      bfloat16, then the same with the square-root ALiBi on our side;
#   3. the decode benchmark (stepjax generate vs HF generate, both on the GPU, float32, batch 1 and 8).
# Usage, from the repository root: bash benchmarks/gpu_checks.sh [log dir]   (default: $OUT, else /tmp/gpu_checks)
# Uses the machine's own python3 with its jax, flax and optax (nothing can be downloaded there) and installs stepjax
# itself editable, without dependencies, offline. STEPJAX_CHECK_PLATFORM=cpu dry-runs the script here (interpret mode).
set -uo pipefail
LOG_DIR=${1:-${OUT:-/tmp/gpu_checks}}
mkdir -p "$LOG_DIR"
PY=${PYTHON:-python3}
PLATFORM=${STEPJAX_CHECK_PLATFORM:-cuda}
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=3
compiled=1
bench_args=()
if [ "$PLATFORM" = cpu ]; then
    compiled=0
    bench_args=(--interpret --tiny)
fi

{
    status=0
    echo "== machine"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "(no nvidia-smi)"
    "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__)" || exit 1
    JAX_PLATFORMS=$PLATFORM "$PY" -c "import jax; print(jax.devices())" || exit 1

    echo "== install stepjax (editable, no dependencies, offline)"
    "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . || exit 1

    echo "== kernel tests, kernels compiled=$compiled on $PLATFORM"
    JAX_PLATFORMS=$PLATFORM STEPJAX_PALLAS_COMPILED=$compiled timeout 420 "$PY" -m pytest -q -p no:cacheprovider \
        tests/kernels -k "not shard" --ignore=tests/kernels/test_lowering.py --junitxml="$LOG_DIR/kernel_tests.xml" \
        || status=1

    echo "== flash attention vs jax.nn.dot_product_attention"
    JAX_PLATFORMS=$PLATFORM timeout 240 "$PY" -m benchmarks.flash_attention "${bench_args[@]}" || status=1
    echo "== the same with square-root ALiBi (our side only: its cost, not a like-for-like race)"
    JAX_PLATFORMS=$PLATFORM timeout 180 "$PY" -m benchmarks.flash_attention --alibi "${bench_args[@]}" || status=1

    echo "== greedy decode vs Hugging Face generate, both on the device (bench_57m, float32, batch 1 and 8)"
    if [ "$PLATFORM" = cpu ]; then decode_args=(--preset tiny --new 8 --rounds 2); else decode_args=(); fi
    JAX_PLATFORMS=$PLATFORM timeout 300 "$PY" -m benchmarks.decode "${decode_args[@]}" || status=1

    echo "gpu_checks: exit status $status"
    exit $status
} 2>&1 | tee "$LOG_DIR/gpu_checks.log"
exit "${PIPESTATUS[0]}"
