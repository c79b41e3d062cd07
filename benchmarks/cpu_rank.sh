#!/usr/bin/env bash
# Issue 11's CPU measurements in one short run (a few minutes on 2 cores):
#
#   bash benchmarks/cpu_rank.sh [extra suite arguments]
#
# 1. calibrates impl="auto"'s cost model on this machine (benchmarks/results/
#    calibration-cpu.json, used for the run through $TORCHKRON_CALIBRATION);
# 2. times dense, the factored chain (torchkron:bmm), materialise-then-GEMM
#    (torchkron:materialize) and KronLinear (impl="auto") at the rank-R shapes
#    (768->3072 as 64x32 (x) 48x24, 1024 rows, ranks 1/4/16) and the three CPU goal
#    shapes, forward, training step, and training step with a stride-0 output gradient
#    (`.sum().backward()`), writing benchmarks/results/bench-cpu-rank.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
export TORCHKRON_CALIBRATION="${TORCHKRON_CALIBRATION:-benchmarks/results/calibration-cpu.json}"
"$PYTHON" -m torchkron.experiments.commands.bench --device cpu --calibrate "$@"
exec "$PYTHON" -m torchkron.experiments.commands.bench --device cpu --dtype float32 \
    --shapes 768-3072-r1-b1024,768-3072-r4-b1024,768-3072-r16-b1024,784-625-b64,1024-b256,4096-b1024 \
    --contenders dense,dense:onednn,torchkron:bmm,torchkron:materialize,KronLinear \
    --rounds 3 --min-run-time 0.2 --out benchmarks/results --tag rank "$@"
