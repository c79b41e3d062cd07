#!/usr/bin/env bash
# One prepared GPU session: environment, correctness, benchmark. Installs nothing.
#
#   bash benchmarks/gpu.sh [OUT_DIR] [bench options]  # on the GPU (at most ~7.5 minutes)
#   bash benchmarks/gpu.sh --dry-run [OUT_DIR]        # CPU smoke test of the scripts
#   bash benchmarks/gpu.sh --suite [bench options]    # only the main suite on CUDA
#                  (torchkron bench, float32 and bfloat16, blocked_autorange, as before)
#
# OUT_DIR defaults to $OUT (the device tool's output folder) or benchmarks/results.
# Writes there:
#   gpu-env-<card>.txt            nvidia-smi, python, torch, triton, CUDA, this commit
#   gpu-check-<card>.{json,log}   every kron_linear impl and the Triton kernels against the
#                                 float64 torch.kron reference (forward and all gradients)
#   bench-<card>-gpu.{json,md,log} torchkron bench --device cuda --shape-set priority
#                                 --graphs --budget: every contender (nn.Linear,
#                                 materialise, each kron_linear impl, KronLinear), bfloat16
#                                 and float32, forward and training step, eager and replayed
#                                 as a CUDA graph, timed by CUDA events, shapes in priority
#                                 order (4096 at 16,384 rows first) until the budget is spent
# <card> is the name torch reports, e.g. cuda-nvidia-h200. Each part runs under its own
# timeout and a failing part does not stop the next; the benchmark stops itself when its
# budget is spent (pairs not reached are listed as skipped; its checkpoint
# .bench-<card>-gpu.partial.json then lets `--resume` finish them). Time limits (seconds) can be
# changed through CHECK_BUDGET, CHECK_TIMEOUT, BENCH_BUDGET and BENCH_TIMEOUT; CHECK=0
# leaves out the correctness part
# (worst case with the defaults: about 10 + 150 + 290 s, 7.5 minutes).
set -uo pipefail
cd "$(dirname "$0")/.."

DRY=0
SUITE=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
if [ "${1:-}" = "--suite" ]; then SUITE=1; shift; fi
OUT_DIR="${OUT:-benchmarks/results}"
if [ "$SUITE" = 0 ] && [ $# -gt 0 ] && [ "${1#--}" = "$1" ]; then OUT_DIR="$1"; shift; fi  # the rest: bench
mkdir -p "$OUT_DIR"

# The project's venv if it has a CUDA torch (or for the dry run), else the machine's
# python3 (the GPU image's python3 holds torch and triton; nothing can be installed there).
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
    PYTHON=python3
    if [ -x .venv/bin/python ] && { [ "$DRY" = 1 ] || .venv/bin/python -c \
        "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; }; then
        PYTHON=.venv/bin/python
    fi
fi
# Run from the source tree; no install needed (torchkron needs only torch and numpy).
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

if [ "$SUITE" = 1 ]; then
    # The main suite (writes bench-cuda-<card>.{json,md}); extra arguments go to it.
    exec "$PYTHON" -m torchkron bench \
        --device cuda --dtype float32,bfloat16 --timer benchmark --out "$OUT_DIR" "$@"
fi

if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1  # the kernels run in Triton's CPU interpreter, tiny sizes
    DEV_ARGS=(--device cpu --quick)
    CHECK_ARGS=()
    # CUDA events and graphs need a GPU: the dry run times with blocked_autorange.
    BENCH_ARGS=(--device cpu --quick --min-run-time 0.001 --rounds 1 --warmup 0 --budget 120)
    CHECK_TIMEOUT="${CHECK_TIMEOUT:-300}"
    BENCH_TIMEOUT="${BENCH_TIMEOUT:-300}"
    SLUG=cpu
else
    DEV_ARGS=(--device cuda)
    CHECK_ARGS=(--budget "${CHECK_BUDGET:-120}")
    BENCH_ARGS=(--device cuda --shape-set priority --graphs --min-run-time 0.015 --warmup 0.05
                --budget "${BENCH_BUDGET:-250}")
    CHECK_TIMEOUT="${CHECK_TIMEOUT:-150}"
    BENCH_TIMEOUT="${BENCH_TIMEOUT:-290}"
    SLUG=$("$PYTHON" -c "import torch; n = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'; print('cuda-' + '-'.join(''.join(c.lower() if c.isalnum() else ' ' for c in n).split()))" 2>/dev/null || echo cuda-unknown)
fi

ENV_FILE="$OUT_DIR/gpu-env-$SLUG.txt"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    echo "python: $PYTHON"
    nvidia-smi 2>&1 | head -20 || echo "nvidia-smi: not available"
    timeout 120 "$PYTHON" - <<'PY' 2>&1
import sys, platform
print("python", platform.python_version(), sys.executable)
try:
    import torch
    print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        print("device", torch.cuda.get_device_name(0), f"{p.total_memory / 2**30:.0f} GiB",
              p.multi_processor_count, "SMs", f"cc {p.major}.{p.minor}")
except Exception as exc:
    print("torch: not importable:", exc)
try:
    import triton
    print("triton", triton.__version__)
except Exception as exc:
    print("triton: not importable:", exc)
try:
    import torchkron, torchkron.functional.impls.triton as t
    print("torchkron", torchkron.__version__, "from", torchkron.__file__, "triton usable:", t.is_available())
except Exception as exc:
    print("torchkron: not importable:", exc)
PY
} > "$ENV_FILE" 2>&1
cat "$ENV_FILE"

status=0
if [ "${CHECK:-1}" = 1 ]; then  # CHECK=0: the benchmark alone (the test of this script)
echo "== correctness (timeout ${CHECK_TIMEOUT}s)"
timeout "$CHECK_TIMEOUT" "$PYTHON" benchmarks/gpu_check.py ${DEV_ARGS[@]+"${DEV_ARGS[@]}"} ${CHECK_ARGS[@]+"${CHECK_ARGS[@]}"} --out "$OUT_DIR" \
    2>&1 | tee "$OUT_DIR/gpu-check-$SLUG.log"
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "gpu_check exited $rc"; status=1; }
fi

echo "== benchmark (timeout ${BENCH_TIMEOUT}s)"
timeout "$BENCH_TIMEOUT" "$PYTHON" -m torchkron bench ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} \
    --dtype bfloat16,float32 --tag gpu --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/bench-$SLUG-gpu.log"
rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || { echo "torchkron bench exited $rc"; status=1; }

echo "== files in $OUT_DIR"
ls -la "$OUT_DIR"
exit $status
