"""``torchkron lm compress`` and ``torchkron lm compress-report``.

``lm compress``: a dense teacher (trained by the GPT study's recipe if ``--teacher`` is
not given and ``OUT/teacher`` has none), then every (method, budget, seed) student of
:mod:`torchkron.experiments.lm.compress` converted and distilled
(:mod:`torchkron.experiments.lm.distill`), in priority order (seed 0 of every student at
3.9%, then 7.8%, then the other seeds), ``--jobs`` at a time; then the report.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
from pathlib import Path
from typing import Any

from torchkron.experiments.options import non_negative_float, positive_float, positive_int

__all__ = ["add_compress_arguments"]

DEFAULT_OUT = "results/lm-compress"
TEACHER_FILE = "teacher.safetensors"
_WORKER: dict[str, Any] = {}


def teacher_path(out: Path) -> Path:
    return out / "teacher" / TEACHER_FILE


def save_teacher(model: Any, path: Path, info: dict[str, Any]) -> None:
    """The teacher's weights as safetensors (no code runs when loading it), its spec and
    provenance in the metadata; written atomically."""
    import json

    from safetensors.torch import save

    from torchkron.experiments.common.files import atomic_write_bytes

    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "head.weight"}
    meta = {"spec": json.dumps(model.spec.to_dict()), "info": json.dumps(info)}
    atomic_write_bytes(path, save(state, metadata=meta))


def load_teacher(path: Path) -> tuple[Any, dict[str, Any]]:
    """``(GPT, info)`` from :func:`save_teacher`'s file; the spec is validated by
    :class:`GPTSpec` before any tensor is allocated."""
    import json

    from safetensors import safe_open

    from torchkron.experiments.common.errors import UserError
    from torchkron.experiments.lm.gpt import GPT, GPTSpec

    if not path.is_file():
        raise UserError(
            f"No teacher at {path}; pass --teacher FILE.safetensors, or omit --teacher to "
            "train the study's dense teacher into OUT/teacher."
        )
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            spec = GPTSpec.from_dict(json.loads(meta["spec"]))
            info = dict(json.loads(meta.get("info", "{}")))
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise UserError(
            f"{path} is not a torchkron teacher file ({type(exc).__name__}: {exc}); "
            "re-export it with `torchkron lm compress`."
        ) from None
    model = GPT(spec)
    state["head.weight"] = state["wte.weight"]
    model.load_state_dict(state)
    model.eval()
    return model, info


def _ensure_teacher(args: argparse.Namespace, data: Any, progress: Any) -> Path:
    """``--teacher``, else ``OUT/teacher/teacher.safetensors``, trained (dense config of
    the GPT study: lr 0.004, seed 0, 2000 iterations) and exported if missing."""
    if args.teacher is not None:
        return Path(args.teacher)
    path = teacher_path(args.out)
    if path.exists():
        return path
    import torch

    from torchkron.experiments.lm.config import LMConfig
    from torchkron.experiments.lm.gpt import GPT, GPTSpec
    from torchkron.experiments.lm.trainer import LMJob, LMPaths, train_lm

    job = LMJob(
        "dense",
        GPTSpec(vocab_size=data.vocab_size, **_teacher_overrides(args)),
        LMConfig(iters=args.teacher_iters, lr=0.004, threads=1),
        0,
        family="custom",
        description="dense",
    )
    paths = LMPaths.under(args.out / "teacher", job.name, job.seed)
    progress.message(f"training the dense teacher into {paths.record.parent.parent}")
    record = train_lm(job, data, paths, command=args.command_line, on_eval=progress.eval)
    state = torch.load(paths.model, weights_only=True)
    model = GPT(job.spec)
    model.load_state_dict(state["state_dict"])
    info = {
        "run": str(paths.record),
        "val_loss_full": record["final"].get("val_loss_full"),
        "config": record["config"],
        "git_sha": record["environment"].get("git_sha"),
    }
    save_teacher(model, path, info)
    return path


def _teacher_overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "n_embd": args.n_embd,
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "block_size": args.block_size,
    }


def plan_jobs(
    methods: list[str], budgets: list[str], seeds: int, configs: list[Any]
) -> list[tuple[Any, Any]]:
    """``(DistillJob, DistillConfig)`` pairs: seed 0 of everything first, then by budget,
    method and recipe (``configs``: one per ``--lr`` x ``--dense-lr``)."""
    from torchkron.experiments.lm.distill import DistillJob

    return [
        (DistillJob(m, b, s), c)
        for s in range(seeds)
        for b in budgets
        for m in methods
        for c in configs
    ]


def _init_worker(data_dir: Path | None, any_text: bool, teacher: Path) -> None:
    from torchkron.experiments.common.workers import exit_with_parent
    from torchkron.experiments.data.text import load_text

    exit_with_parent()
    _WORKER["data"] = load_text(data_dir, download=False, check_md5=not any_text)
    _WORKER["teacher"] = load_teacher(teacher)


def _run_job(job: Any, config: Any, out: Path, command: str) -> Any:
    from torchkron.experiments.lm.distill import distill_run

    teacher, info = _WORKER["teacher"]
    return distill_run(job, teacher, info, _WORKER["data"], config, out, command=command)


def _cmd_compress(args: argparse.Namespace) -> int:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from torchkron.experiments.commands._lm_shared import load_data, session
    from torchkron.experiments.common.errors import UserError
    from torchkron.experiments.lm.compress import BUDGETS, METHODS
    from torchkron.experiments.lm.compress_report import write_compress_report
    from torchkron.experiments.lm.distill import DistillConfig

    methods = [m for m in METHODS if any(fnmatch.fnmatch(m, p) for p in args.methods)]
    budgets = [b for b in BUDGETS if b in args.budgets]
    if not methods or not budgets:
        raise UserError(
            f"--methods/--budgets match nothing; methods: {', '.join(METHODS)}; budgets: "
            f"{', '.join(BUDGETS)}."
        )
    # One recipe per --lr x --dense-lr (a rate sweep); one-rate uses no --dense-lr.
    dense_lrs = args.dense_lr if args.optimizer == "structure-aware" else args.dense_lr[:1]
    configs = [
        DistillConfig(
            iters=args.iters,
            lr=lr,
            warmup_iters=min(args.warmup_iters, args.iters),
            temperature=args.temperature,
            hidden_mse=args.hidden_mse,
            calib_batches=args.calib_batches,
            eval_interval=min(args.eval_interval, args.iters),
            optimizer=args.optimizer,
            dense_lr=dense_lr,
        )
        for lr in args.lr
        for dense_lr in dense_lrs
    ]
    # --out locked for the session, as every lm action: two sessions never write at once.
    with session(args) as progress:
        data = load_data(args, progress)
        teacher = _ensure_teacher(args, data, progress)
        jobs = plan_jobs(methods, budgets, args.seeds, configs)
        progress.message(f"teacher {teacher}; {len(jobs)} students; {args.jobs} worker(s)")
        if args.jobs <= 1:
            _init_worker(args.data_dir, args.any_text, teacher)
            for job, config in jobs:
                rec = _run_job(job, config, args.out, args.command_line)
                _done(progress, rec)
        else:
            ctx = mp.get_context("spawn")
            with ProcessPoolExecutor(
                args.jobs,
                mp_context=ctx,
                initializer=_init_worker,
                initargs=(data.source, args.any_text, teacher),
            ) as pool:
                futures = [
                    pool.submit(_run_job, j, c, args.out, args.command_line) for j, c in jobs
                ]
                for fut in as_completed(futures):
                    _done(progress, fut.result())
        if not args.no_report:
            for path in write_compress_report(
                args.out, scratch=args.scratch, plots=not args.no_plots
            ):
                progress.message(f"wrote {path}")
    return 0


def _done(progress: Any, rec: Any) -> None:
    m = rec["metrics"]
    progress.message(
        f"{rec['variant']} seed {rec['seed']}: converted {m['val_loss_converted']:.4f} -> "
        f"distilled {m['val_loss_distilled']:.4f}"
    )


def _cmd_report(args: argparse.Namespace) -> int:
    from torchkron.experiments.lm.compress_report import write_compress_report

    for path in write_compress_report(args.dir, scratch=args.scratch, plots=not args.no_plots):
        print(f"wrote {path}")
    return 0


def _add_scratch(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--scratch",
        type=Path,
        nargs="+",
        default=[Path("results/lm-v2"), Path("results/lm")],
        help="from-scratch GPT studies to compare with, the reference first (the first "
        "that has runs; default: results/lm-v2 (structure-aware rates), then results/lm)",
    )


def add_compress_arguments(sub: Any) -> None:
    """Add ``compress`` and ``compress-report`` to ``torchkron lm``'s actions."""
    from torchkron.experiments.commands._lm_shared import add_data
    from torchkron.experiments.lm.compress import BUDGETS
    from torchkron.experiments.lm.distill import DISTILL_OPTIMIZERS, DistillConfig

    p = sub.add_parser(
        "compress",
        help="convert a trained dense GPT's MLPs (Kronecker, low-rank, Monarch, pruned, "
        "narrower) and distil each student from it",
        description="Students of a dense teacher at the GPT study's MLP budgets, each "
        "converted by one method then distilled for the same number of iterations "
        "(docs/lm-compress.md). Resumable with --resume.",
    )
    p.add_argument(
        "--teacher",
        type=Path,
        default=None,
        help="teacher .safetensors (default: OUT/teacher/teacher.safetensors, trained if missing)",
    )
    p.add_argument(
        "--teacher-iters",
        type=positive_int,
        default=2000,
        help="iterations when training the teacher (default %(default)s)",
    )
    p.add_argument(
        "--methods",
        nargs="+",
        default=["*"],
        metavar="PATTERN",
        help="method patterns (default: all)",
    )
    p.add_argument("--budgets", nargs="+", default=list(BUDGETS), choices=list(BUDGETS))
    p.add_argument("--seeds", type=positive_int, default=3, help="default %(default)s")
    p.add_argument("--iters", type=positive_int, default=500, help="distillation steps")
    p.add_argument(
        "--optimizer",
        choices=DISTILL_OPTIMIZERS,
        default=DistillConfig.optimizer,
        help="structure-aware: factors at --lr x their torchkron.lr_multipliers multiplier, "
        "every other parameter at --dense-lr; one-rate: every parameter at --lr (the first "
        "round) (default %(default)s)",
    )
    for flag, default, text in (
        ("--lr", DistillConfig.lr, "peak rate (structure-aware: the factors' base rate)"),
        ("--dense-lr", DistillConfig.dense_lr, "structure-aware: peak rate of every parameter "
         "that is not a factor"),
    ):  # fmt: skip
        p.add_argument(
            flag,
            type=positive_float,
            nargs="+",
            default=[default],
            help=f"{text}; several values sweep, one run per --lr x --dense-lr "
            "(default %(default)s)",
        )
    p.add_argument("--warmup-iters", type=positive_int, default=50)
    p.add_argument("--temperature", type=positive_float, default=2.0)
    p.add_argument(
        "--hidden-mse",
        type=non_negative_float,
        default=0.0,
        help="weight of the final-hidden-state MSE (default 0)",
    )
    p.add_argument("--calib-batches", type=positive_int, default=32)
    p.add_argument("--eval-interval", type=positive_int, default=100)
    p.add_argument("--jobs", type=positive_int, default=max(1, min(2, os.cpu_count() or 1)))
    _add_scratch(p)
    p.add_argument("--no-report", action="store_true")
    p.add_argument("--no-plots", action="store_true")
    g = p.add_argument_group("teacher model (when training it)")
    g.add_argument("--n-embd", type=positive_int, default=128)
    g.add_argument("--n-layer", type=positive_int, default=4)
    g.add_argument("--n-head", type=positive_int, default=4)
    g.add_argument("--block-size", type=positive_int, default=64)
    add_data(p)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="default %(default)s")
    p.add_argument("--resume", action="store_true", help="keep finished runs")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(lm_func=_cmd_compress)

    p = sub.add_parser("compress-report", help="lm compress's table, plot, findings")
    p.add_argument("dir", type=Path, nargs="?", default=Path(DEFAULT_OUT), metavar="DIR")
    _add_scratch(p)
    p.add_argument("--no-plots", action="store_true")
    p.set_defaults(lm_func=_cmd_report)
