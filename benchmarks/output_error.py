"""Output error of activation-aware vs plain conversion on the lm compress teacher's MLP layers.

Run from the repository root after `torchkron lm compress` exported the teacher:
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/output_error.py
Prints, per MLP layer, how well C1 (x) C2 fits the input moment C, and the ratio of the
activation-aware to the plain output error for Kronecker (R=4, 8) and low rank (r=4, 8).
"""

import sys
from pathlib import Path

import torch

from torchkron.experiments.commands.lm_compress import load_teacher
from torchkron.experiments.data.text import load_text
from torchkron.experiments.lm.compress import mlp_moments
from torchkron.experiments.lm.distill import DistillConfig, calibration_batches
from torchkron.factorization import (
    factor_shapes,
    kronecker_moment,
    nearest_kronecker,
    output_error,
    whitened_low_rank,
)
from torchkron.functional import kron_weight

torch.set_num_threads(1)
teacher, _ = load_teacher(Path("results/lm-compress/teacher/teacher.safetensors"))
data = load_text(Path(sys.argv[1]) if len(sys.argv) > 1 else None, download=False)
moments = mlp_moments(teacher, calibration_batches(data, DistillConfig(), 64))
for name, c in moments.items():
    w = teacher.get_submodule(name).weight.detach().double()
    shapes = factor_shapes(w.shape[1], w.shape[0])
    f = kronecker_moment(c, shapes)
    kfac = float(torch.linalg.norm(c - torch.kron(f[0], f[1])) / torch.linalg.norm(c))
    row = [name, f"kfac-fit {kfac:.3f}"]
    for r in (4, 8):
        p, _ = nearest_kronecker(w, shapes, r)
        ep = output_error(w, kron_weight(p), c)
        a, ea = nearest_kronecker(w, shapes, r, input_second_moment=c)
        u, v, el = whitened_low_rank(w, r)
        u2, v2, ew = whitened_low_rank(w, r, c)
        el = output_error(w, u @ v.T, c)
        row.append(f"R{r}: kron {ea / ep:.3f} ({ep:.3f}->{ea:.3f}) lowrank {ew / el:.3f}")
    print(" | ".join(row))
