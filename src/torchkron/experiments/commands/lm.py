"""``torchkron lm``: a character-level GPT on Tiny Shakespeare, dense or structured.

- ``torchkron lm train``: one (config, seed), structure of each layer group from
  ``--attn`` / ``--mlp`` (``dense``, ``kron:k2:r4``, ``lowrank:r4``, ``monarch:b32``).
- ``torchkron lm sweep``: the CPU study (:mod:`torchkron.experiments.lm.schedule`):
  learning-rate sweeps per structure family, then every config with 3 seeds;
  ``--study v2`` (:mod:`torchkron.experiments.lm.schedule_v2`): the same without its
  learning-rate confound (structure-aware rates), plus an equal-compute Kronecker model.
- ``torchkron lm report DIR``: table, frontier plots and findings from ``DIR/runs``.

Heavy imports (torch, matplotlib) happen only when a subcommand runs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from torchkron.experiments.commands._lm_shared import add_data, load_data, session
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.runs import check_run_name
from torchkron.experiments.lm.config import OPTIMIZERS, LMConfig
from torchkron.experiments.options import (
    config_from,
    default_of,
    finite_float,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)

__all__ = ["add_arguments", "run"]

DEFAULT_OUT = "results/lm"


def _add_recipe(p: argparse.ArgumentParser) -> None:
    # The defaults are LMConfig's: each setting has one default.
    g = p.add_argument_group("recipe (nanoGPT shakespeare_char CPU defaults)")
    g.add_argument(
        "--iters", type=positive_int, default=_default("iters"), help="steps (default %(default)s)"
    )
    g.add_argument(
        "--batch-size",
        type=positive_int,
        default=_default("batch_size"),
        help="default %(default)s",
    )
    g.add_argument(
        "--lr", type=positive_float, default=_default("lr"), help="peak lr (default %(default)s)"
    )
    g.add_argument(
        "--min-lr",
        type=non_negative_float,
        default=_default("min_lr"),
        help="final lr (default 0: lr / 10)",
    )
    g.add_argument(
        "--warmup-iters",
        type=non_negative_int,
        default=_default("warmup_iters"),
        help="default %(default)s",
    )
    g.add_argument(
        "--lr-decay-iters",
        type=non_negative_int,
        default=_default("lr_decay_iters"),
        help="end of the cosine (0: --iters)",
    )
    g.add_argument(
        "--beta1", type=finite_float, default=_default("beta1"), help="default %(default)s"
    )
    g.add_argument(
        "--beta2", type=finite_float, default=_default("beta2"), help="default %(default)s"
    )
    g.add_argument(
        "--weight-decay",
        type=non_negative_float,
        default=_default("weight_decay"),
        help="default %(default)s",
    )
    g.add_argument(
        "--grad-clip",
        type=non_negative_float,
        default=_default("grad_clip"),
        help="0: none (default %(default)s)",
    )
    g.add_argument(
        "--eval-interval",
        type=positive_int,
        default=_default("eval_interval"),
        help="default %(default)s",
    )
    g.add_argument(
        "--eval-iters",
        type=positive_int,
        default=_default("eval_iters"),
        help="fixed batches per split (default 20)",
    )
    g.add_argument(
        "--no-full-eval", action="store_true", help="skip the full validation split at the end"
    )
    g.add_argument(
        "--threads",
        type=non_negative_int,
        default=_default("threads"),
        help="torch threads per run (0: default)",
    )
    g.add_argument(
        "--device", default=_default("device"), help="torch device (default %(default)s)"
    )
    g.add_argument(
        "--optimizer",
        choices=OPTIMIZERS,
        default=_default("optimizer"),
        help="one-rate: every parameter at --lr (the first study); structure-aware: "
        "non-structured parameters at --dense-lr, factors at --lr x their "
        "torchkron.lr_multipliers multiplier; two-rate: as structure-aware without the "
        "multipliers, every factor at --lr (the v2 ablation) (default %(default)s; sweep "
        "--study v2: structure-aware)",
    )
    g.add_argument(
        "--dense-lr",
        type=non_negative_float,
        default=None,
        help="structure-aware, two-rate: peak lr of the non-structured parameters (default: --lr; "
        "sweep --study v2: the first study's best dense lr, 4e-3)",
    )


def _add_model(p: argparse.ArgumentParser, *, structures: bool) -> None:
    g = p.add_argument_group("model (nanoGPT shakespeare_char CPU defaults)")
    g.add_argument("--n-layer", type=positive_int, default=4)
    g.add_argument("--n-head", type=positive_int, default=4)
    g.add_argument(
        "--n-embd", type=positive_int, default=None, help="width (default 128; sweep: per config)"
    )
    g.add_argument("--block-size", type=positive_int, default=64)
    g.add_argument("--dropout", type=non_negative_float, default=0.0)
    g.add_argument("--bias", action="store_true", help="biases in linears and LayerNorms")
    g.add_argument("--init", choices=("gpt2", "linear"), default="gpt2")
    if structures:
        g.add_argument("--mlp-hidden", type=non_negative_int, default=0, help="0: 4 * n_embd")
        g.add_argument("--attn", default="dense", help="attention linears, e.g. kron:k2:r4")
        g.add_argument("--mlp", default="dense", help="MLP linears, e.g. lowrank:r4")


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="default %(default)s")
    p.add_argument(
        "--resume",
        action="store_true",
        help="keep finished runs, continue interrupted ones from their last checkpoint",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines (log still written)")


def _add_first_study(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--first-study",
        type=Path,
        default=Path(DEFAULT_OUT),
        metavar="DIR",
        help="a v2 study's report: the first study's folder, shown beside it (default %(default)s)",
    )


def _run_name(text: str) -> str:
    """``--name``: a plain file name (it names the run's files inside --out)."""
    try:
        return check_run_name(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _default(name: str) -> Any:
    return default_of(LMConfig, name)


def _config(args: argparse.Namespace) -> LMConfig:
    dense_lr = args.dense_lr if args.dense_lr is not None else _default("dense_lr")
    return config_from(LMConfig, args, full_eval=not args.no_full_eval, dense_lr=dense_lr)


def _model_overrides(args: argparse.Namespace) -> dict[str, Any]:
    kw: dict[str, Any] = {
        "n_layer": args.n_layer,
        "n_head": args.n_head,
        "block_size": args.block_size,
        "dropout": args.dropout,
        "bias": args.bias,
        "init": args.init,
    }
    return kw


def _refuse_overwrite(names: list[tuple[str, int]], out: Path, resume: bool) -> None:
    from torchkron.experiments.lm.trainer import LMPaths

    if resume:
        return
    found = [f"{n} seed {s}" for n, s in names if LMPaths.under(out, n, s).record.exists()]
    if found:
        more = " ..." if len(found) > 3 else ""
        raise UserError(
            f"{out} already holds runs ({', '.join(found[:3])}{more}); pass --resume to "
            "continue them (finished runs are kept, interrupted ones go on from their last "
            "checkpoint), or choose another --out folder."
        )


def _cmd_train(args: argparse.Namespace) -> int:
    from torchkron.experiments.lm.schedule import linear_id, parse_linear

    attn, mlp = parse_linear(args.attn), parse_linear(args.mlp)
    name = args.name or "-".join(
        [f"attn_{linear_id(attn)}", f"mlp_{linear_id(mlp)}"]
        + ([f"h{args.mlp_hidden}"] if args.mlp_hidden else [])
        + ([f"e{args.n_embd}"] if args.n_embd else [])
    ).replace(":", "")
    with session(args) as progress:
        _refuse_overwrite([(name, args.seed)], args.out, args.resume)
        return _train_one(args, name, attn, mlp, progress)


def _train_one(args: argparse.Namespace, name: str, attn: Any, mlp: Any, progress: Any) -> int:
    from torchkron.experiments.lm.gpt import GPTSpec
    from torchkron.experiments.lm.runner import iters_done
    from torchkron.experiments.lm.trainer import LMJob, LMPaths, train_lm

    data = load_data(args, progress)
    spec = GPTSpec(
        vocab_size=data.vocab_size,
        n_embd=args.n_embd or 128,
        mlp_hidden=args.mlp_hidden,
        attn=attn,
        mlp=mlp,
        **_model_overrides(args),
    )
    job = LMJob(name, spec, _config(args), args.seed, family="custom", description=name)
    paths = LMPaths.under(args.out, name, args.seed)
    progress.expect(job, iters_done(paths))
    # Trained here, not through the study runner: that one logs a failed run and goes on
    # with the next, and a single run's error must reach the user as it is.
    record = train_lm(job, data, paths, command=args.command_line, on_eval=progress.eval)
    if record.get("diverged"):
        print(f"{name} seed {args.seed}: diverged: {record['diverged']['reason']}")
        return 1
    final = record["final"]
    full = final.get("val_loss_full")
    print(
        f"{name} seed {args.seed}: {record['parameters']:,} parameters, val loss "
        f"{final['val_loss']:.4f} (fixed batches)"
        + (f", {full:.4f} (full split)" if full is not None else "")
        + f", {final['tokens_per_s']:,.0f} tokens/s"
    )
    return 0


def _plan_v2(args: argparse.Namespace, vocab_size: int) -> Any:
    from torchkron.experiments.lm.schedule_v2 import DENSE_LR, study_plan_v2

    model = _model_overrides(args)
    if args.n_embd:
        model["n_embd"] = args.n_embd
    return study_plan_v2(
        vocab_size=vocab_size,
        base=_config(args),
        model=model,
        dense_lr=args.dense_lr if args.dense_lr is not None else DENSE_LR,
        lrs=tuple(args.lrs),
        sweep_iters=args.sweep_iters,
        seeds=args.seeds,
        only=tuple(args.only or ()),
        extend=args.lr_extend,
    )


def _plan(args: argparse.Namespace, vocab_size: int) -> Any:
    from torchkron.experiments.lm.schedule import study_plan

    if args.study == "v2":
        return _plan_v2(args, vocab_size)

    plan = study_plan(
        vocab_size=vocab_size,
        base=_config(args),
        lrs=tuple(args.lrs),
        sweep_iters=args.sweep_iters,
        seeds=args.seeds,
        only=tuple(args.only or ()),
        extend=args.lr_extend,
    )
    overrides = _model_overrides(args)
    if args.n_embd:
        overrides["n_embd"] = args.n_embd
    from dataclasses import replace

    def adapt(job: Any) -> Any:
        keep = {
            k: v for k, v in overrides.items() if not (k == "n_embd" and job.spec.n_embd != 128)
        }
        return replace(job, spec=job.spec.with_(**keep))

    plan = type(plan)(
        [adapt(j) for j in plan.sweep],
        [replace(p, job=adapt(p.job)) for p in plan.main],
        plan.extend,
    )
    return plan


def _cmd_sweep(args: argparse.Namespace) -> int:
    if args.list:
        plan = _plan(args, 65)
        for j in plan.sweep:
            print(f"sweep  {j.name:42s} lr {j.config.lr:g}  {j.config.iters} iters")
        for p in plan.main:
            j = p.job
            print(f"main   {j.name:28s} seed {j.seed}  {j.description}")
        print(f"{len(plan.sweep)} sweep runs + {len(plan.main)} main runs")
        return 0
    with session(args) as progress:
        return _sweep(args, progress)


def _sweep(args: argparse.Namespace, progress: Any) -> int:
    from torchkron.experiments.lm.runner import run_plan

    data = load_data(args, progress)
    plan = _plan(args, data.vocab_size)
    names = [(j.name, j.seed) for j in plan.sweep] + [(p.job.name, p.job.seed) for p in plan.main]
    _refuse_overwrite(names, args.out, args.resume)
    progress.message(
        f"data: {data.source} (md5 {data.md5}); {len(plan.sweep)} lr-sweep runs + "
        f"{len(plan.main)} main runs; {args.jobs} worker(s), {args.threads} thread(s) each"
    )
    run_plan(
        plan,
        data,
        out_dir=args.out,
        command=args.command_line,
        workers=args.jobs,
        progress=progress,
        check_md5=not args.any_text,
    )
    progress.message("all runs done; writing the report")
    if not args.no_report:
        from torchkron.experiments.lm.report_v2 import write_any_report

        for path in write_any_report(args.out, plots=not args.no_plots, first=args.first_study):
            progress.message(f"wrote {path}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from torchkron.experiments.lm.report_v2 import write_any_report

    for path in write_any_report(args.dir, plots=not args.no_plots, first=args.first_study):
        print(f"wrote {path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from torchkron.experiments.common.files import atomic_write_json, atomic_write_text
    from torchkron.experiments.lm.bench import bench_markdown, bench_steps, study_specs

    specs = study_specs(args.configs or ())
    if not specs:
        raise UserError("--configs matches no study config; see `torchkron lm sweep --list`.")
    result = bench_steps(specs, rounds=args.rounds, threads=args.threads)
    text = bench_markdown(result, args.note)
    atomic_write_json(args.out / "step_bench.json", result)
    atomic_write_text(args.out / "step_bench.md", text)
    print(text)
    return 0


def add_arguments(lm: argparse.ArgumentParser) -> None:
    """``torchkron lm``'s actions: ``train``, ``sweep``, ``bench`` and ``report``."""
    sub = lm.add_subparsers(dest="lm_command", metavar="ACTION", required=True)

    p = sub.add_parser("train", help="train one config with one seed")
    p.add_argument(
        "--name",
        type=_run_name,
        default=None,
        help="config id, a plain file name (default: from the structures)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    _add_model(p, structures=True)
    _add_recipe(p)
    add_data(p)
    _add_common(p)
    p.set_defaults(lm_func=_cmd_train)

    p = sub.add_parser(
        "sweep",
        help="the CPU study: lr sweep per structure family, then every config x seeds",
        description="Learning-rate sweep (one seed, --sweep-iters steps) per structure "
        "family, then every config of the study at its family's best lr with --seeds "
        "seeds, in priority order; then the report. Resumable with --resume.",
    )
    p.add_argument("--seeds", type=positive_int, default=3, help="default %(default)s")
    p.add_argument(
        "--lrs",
        type=positive_float,
        nargs="+",
        default=[1e-3, 2e-3, 4e-3],
        help="learning rates of each family's sweep (default 1e-3 2e-3 4e-3)",
    )
    p.add_argument(
        "--sweep-iters",
        type=positive_int,
        default=500,
        help="steps of a sweep run, schedule compressed to them (default %(default)s)",
    )
    p.add_argument(
        "--lr-extend",
        type=non_negative_int,
        default=2,
        help="when a family's best rate is at an end of --lrs, sweep half (or twice) "
        "that rate too, up to this many times per family (default %(default)s)",
    )
    p.add_argument("--only", nargs="+", metavar="PATTERN", help="config id patterns to keep")
    p.add_argument(
        "--study",
        choices=("v1", "v2"),
        default="v1",
        help="v1: the first study (one rate per model); v2: structure-aware rates, "
        "3.9%%/7.8%% budgets, Kronecker attention, narrower models, equal compute "
        "(docs/lm.md; default %(default)s)",
    )
    _add_first_study(p)
    p.add_argument("--list", action="store_true", help="print the plan and exit")
    p.add_argument(
        "--jobs",
        type=positive_int,
        default=max(1, min(2, os.cpu_count() or 1)),
        help="runs side by side in worker processes (default: min(2, cores))",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    p.add_argument("--no-plots", action="store_true", help="report without PNG plots")
    _add_model(p, structures=False)
    _add_recipe(p)
    add_data(p)
    _add_common(p)
    p.set_defaults(lm_func=_cmd_sweep)

    p = sub.add_parser(
        "bench",
        help="time a training step of study configs side by side (OUT/step_bench.md)",
    )
    p.add_argument("--configs", nargs="+", metavar="ID", help="config ids (default: all)")
    p.add_argument("--rounds", type=positive_int, default=15, help="timed steps per config")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1)")
    p.add_argument("--note", default="", help="a line about the machine's state")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="default %(default)s")
    p.set_defaults(lm_func=_cmd_bench)

    p = sub.add_parser("report", help="table, plots and findings from DIR/runs alone")
    p.add_argument("dir", type=Path, nargs="?", default=Path(DEFAULT_OUT), metavar="DIR")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    _add_first_study(p)
    p.set_defaults(lm_func=_cmd_report)

    from torchkron.experiments.commands.lm_compress import add_compress_arguments

    add_compress_arguments(sub)  # compress, compress-report (issue 20)


def run(args: argparse.Namespace) -> int:
    action: Any = args.lm_func
    return int(action(args))
