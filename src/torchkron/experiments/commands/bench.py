"""``torchkron bench`` / ``python -m torchkron.experiments.commands.bench``: the suite's options.

Times, in the same run and on the same input, every implementation of one Kronecker-
factored linear map ``y = x @ (sum_r F_1[r] (x) ... (x) F_k[r]).T + b``:

- ``nn.Linear`` of the full size (``dense``);
- ``materialize``: build ``W`` with ``torch.kron`` on every call, then ``F.linear`` (what
  PEFT's and LyCORIS's LoKr layers do);
- ``pyfastkron``: FastKron's ``gemkm`` (optional package);
- ``tltorch``: tensorly-torch's ``FactorizedLinear`` as a block tensor-train with TT-ranks
  1 (rank 1) or ``(1, R, 1)`` (two factors), which is exactly this map (optional package);
- ``torchkron:<impl>`` for each :data:`torchkron.functional.IMPLS` entry and
  ``KronLinear`` (its automatic choice).

Each contender is timed for a forward pass without autograd (``forward``) and for a
training step (``train``: forward and backward for the input, the factors and the bias),
with :mod:`torch.utils.benchmark` medians after a warm-up, contenders interleaved over
several rounds so that load from other processes hits them alike. Every contender is
first checked to compute the same output as ``torchkron:permute``.

Results go to ``<out>/bench-<device>[-quick].json`` and ``.md``, stamped with the
machine, thread count, torch version and git commit.

On CUDA (``--device cuda``) steps are timed between CUDA events by default
(``--timer``); ``--graphs`` also times them replayed as CUDA graphs, ``--budget`` bounds
the run's seconds and ``--shape-set priority`` orders the shapes for such a bounded GPU
session (what ``benchmarks/gpu.sh`` runs).

The suite itself lives in :mod:`torchkron.experiments.bench`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from torchkron.experiments.bench.contenders import contender_names
from torchkron.experiments.bench.report import default_out, result_stem, write_results
from torchkron.experiments.bench.shapes import (
    ALL_SHAPES,
    DTYPES,
    SHAPE_SETS,
    shape_set,
)
from torchkron.experiments.bench.suite import SuiteConfig, run_suite

__all__ = ["TIMERS", "add_arguments", "parse_device", "run"]

TIMERS = ("auto", "benchmark", "events")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``torchkron bench``."""
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: skip the shapes its checkpoint "
        "(OUT/.<name>.partial.json, written after every shape) already holds, if it is the "
        "same configuration on the same commit",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        help="comma-separated dtypes among float32, bfloat16, float64 (default float32)",
    )
    parser.add_argument(
        "--shapes",
        default=None,
        help="comma-separated shape names to run (default: all); see --list",
    )
    parser.add_argument(
        "--contenders", default=None, help="comma-separated contenders (default: all)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads, fixed for the whole run (default: all CPUs)",
    )
    parser.add_argument(
        "--min-run-time",
        type=float,
        default=0.2,
        help="seconds per blocked_autorange measurement (default 0.2)",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument(
        "--warmup", type=float, default=0.1, help="warm-up seconds per contender (default 0.1)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the result files (default: a torchkron-bench folder in the "
        "system's temporary directory; pass --out benchmarks/results to update the "
        "committed results)",
    )
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the machine constants of impl='auto''s cost model on --device and "
        "write them to --calibration-file instead of running the suite",
    )
    parser.add_argument(
        "--calibration-file",
        type=Path,
        default=None,
        help="where --calibrate writes (default: $TORCHKRON_CALIBRATION, else "
        "~/.cache/torchkron/calibration.json, where kron_linear reads it)",
    )
    parser.add_argument("--tag", default=None, help="extra suffix for the result file names")
    parser.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test")
    parser.add_argument(
        "--note", default="", help="a remark stored with the results (e.g. machine load)"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip peak-memory probes")
    parser.add_argument("--list", action="store_true", help="list shapes and contenders")
    parser.add_argument(
        "--shape-set",
        choices=sorted(SHAPE_SETS),
        default=None,
        help="a named list of shapes (default: cpu on the CPU, cuda on a GPU); priority: "
        "the GPU session's list, most important first (see --list)",
    )
    parser.add_argument(
        "--timer",
        choices=TIMERS,
        default="auto",
        help="how steps are timed: benchmark (torch.utils.benchmark's blocked_autorange), "
        "events (back-to-back calls between CUDA events; CUDA only), auto (events on "
        "CUDA, benchmark on the CPU; the default)",
    )
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also time the forward and training steps captured as a CUDA graph and "
        "replayed (modes forward_graph, train_graph; CUDA only)",
    )
    parser.add_argument(
        "--budget",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds for the whole run: shapes are then run one at a time in every "
        "dtype, and those not reached in time are recorded as skipped (default: no limit)",
    )


def parse_device(text: str) -> torch.device:
    """``--device``: a torch device this machine has, else a UserError saying which exist."""
    from torchkron.experiments.common.errors import UserError

    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UserError(
            f"unknown --device {text!r}; use cpu, cuda or cuda:N (a torch device name)."
        ) from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise UserError(
                f"--device {text}, but torch {torch.__version__} sees no CUDA device; run on "
                "a machine with a GPU and a CUDA build of torch, or use --device cpu."
            )
        if device.index is not None and device.index >= count:
            raise UserError(
                f"--device {text}, but torch sees {count} CUDA device(s) (cuda:0.."
                f"cuda:{count - 1}); pick one of those."
            )
        return device
    raise UserError(f"--device {text}: the suite runs on cpu or cuda only; use one of those.")


def _config(args: argparse.Namespace) -> SuiteConfig:
    from torchkron.experiments.common.errors import UserError

    device = parse_device(str(args.device))
    dtypes = []
    for name in str(args.dtype).split(","):
        if name.strip() not in DTYPES:
            raise UserError(f"unknown dtype {name!r}; use {', '.join(DTYPES)}.")
        dtypes.append(DTYPES[name.strip()])
    gpu = _gpu_options(args, device)
    if args.quick and args.shape_set:
        raise UserError(
            f"--quick and --shape-set {args.shape_set} both choose the shapes; pass one of them."
        )
    shapes = list(shape_set(args.shape_set, device.type, args.quick))
    if args.shapes:
        known = {s.name: s for s in ALL_SHAPES}
        wanted = [n.strip() for n in str(args.shapes).split(",") if n.strip()]
        missing = [n for n in wanted if n not in known]
        if missing:
            raise UserError(f"unknown shapes {missing}; known: {', '.join(known)}.")
        shapes = [known[n] for n in wanted]
    contenders = contender_names()
    if args.contenders:
        wanted = [n.strip() for n in str(args.contenders).split(",") if n.strip()]
        missing = [n for n in wanted if n not in contenders]
        if missing:
            raise UserError(f"unknown contenders {missing}; known: {', '.join(contenders)}.")
        contenders = wanted
    cpus = os.cpu_count() or 1
    if args.threads is not None and args.threads < 1:
        raise UserError(
            f"--threads must be a positive number of intra-op threads, got {args.threads}; "
            f"omit it to use all {cpus} CPUs."
        )
    for opt, value in (("--min-run-time", args.min_run_time), ("--warmup", args.warmup)):
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{opt} must be a finite number of seconds >= 0, got {value}.")
    threads = args.threads or cpus
    return SuiteConfig(
        device=device,
        dtypes=dtypes,
        shapes=shapes,
        contenders=contenders,
        threads=threads,
        min_run_time=args.min_run_time,
        rounds=max(1, args.rounds),
        warmup=args.warmup,
        memory=not args.no_memory,
        note=str(args.note or ""),
        tag=str(args.tag or ""),
        **gpu,
    )


def _gpu_options(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """``--timer``, ``--graphs`` and ``--budget`` as SuiteConfig fields, checked."""
    from torchkron.experiments.common.errors import UserError

    timer = str(args.timer)
    if timer == "auto":
        timer = "events" if device.type == "cuda" else "benchmark"
    cuda_only = [opt for opt, used in (("--timer events", timer == "events"),
                                       ("--graphs", args.graphs)) if used]  # fmt: skip
    if cuda_only and device.type != "cuda":
        raise UserError(
            f"{' and '.join(cuda_only)} need a CUDA device, but --device is {device}; "
            "use --device cuda, or drop them on the CPU."
        )
    budget = args.budget
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UserError(
            f"--budget must be a finite number of seconds > 0, got {budget}; omit it for "
            "no time limit."
        )
    return {"timer": timer, "graphs": bool(args.graphs), "budget": budget}


def run(args: argparse.Namespace) -> int:
    """Run the suite; returns the process exit status."""
    if args.list:
        for s in ALL_SHAPES:
            print(f"{s.name:16s} {s.describe()}{'' if s.dense else ' (no dense)'}")
        for name, members in SHAPE_SETS.items():
            print(f"--shape-set {name}: {', '.join(s.name for s in members)}")
        print("contenders:", ", ".join(contender_names()))
        return 0
    cfg = _config(args)
    torch.set_num_threads(cfg.threads)
    if args.calibrate:
        from torchkron.functional import calibrate

        path = args.calibration_file or calibrate.default_path()
        doc = calibrate.write(path, cfg.device, cfg.dtypes[0], cfg.threads)
        print(f"wrote {path}: {json.dumps(doc['devices'][cfg.device.type])}")
        return 0
    stem = result_stem(cfg.device, args.quick, args.tag)
    out = args.out if args.out is not None else default_out()
    checkpoint = out / f".{stem}.partial.json"
    doc = run_suite(
        cfg, log=lambda line: print(line, flush=True), checkpoint=checkpoint, resume=args.resume
    )
    json_path, md_path = write_results(doc, out, stem)
    print(f"wrote {json_path} and {md_path}")
    if doc.get("pairs_not_run"):
        # Kept so that the same command with --resume times only what the budget cut off.
        print(
            f"the time budget left {doc['pairs_not_run']} (dtype, shape) pair(s) not run; "
            f"the same command with --resume runs them ({checkpoint} holds the pairs done)"
        )
    else:
        checkpoint.unlink(missing_ok=True)
    return 0


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m torchkron.experiments.commands.bench", description=__doc__.split("\n\n")[0]
    )
    add_arguments(parser)
    from torchkron.experiments.common.errors import UserError

    try:
        return run(parser.parse_args(argv))
    except UserError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(_cli())
