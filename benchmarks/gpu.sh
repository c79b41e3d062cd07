#!/usr/bin/env bash
# Run the torchkron benchmark suite on the first CUDA device, in float32 and bfloat16.
#
#   bash benchmarks/gpu.sh                 # every default shape
#   bash benchmarks/gpu.sh --shapes 4096-b1024,65536-b64
#
# Results: benchmarks/results/bench-cuda-<card>.{json,md}, the card's name (as torch
# reports it, e.g. nvidia-h100-80gb-hbm3) in the file name. Extra arguments go to the
# suite (see `python -m torchkron.experiments.bench --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
if [ ! -x "$PYTHON" ]; then PYTHON=python3; fi
"$PYTHON" - <<'PY'
import sys, torch
if not torch.cuda.is_available():
    sys.exit(f"benchmarks/gpu.sh: torch {torch.__version__} sees no CUDA device; install a CUDA "
             "build of torch (make venv TORCH_INDEX_URL=...) on a machine with a GPU.")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")
PY
exec "$PYTHON" -m torchkron.experiments.bench \
    --device cuda --dtype float32,bfloat16 --out benchmarks/results "$@"
