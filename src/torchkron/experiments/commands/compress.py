"""``torchkron compress``: the arguments of :mod:`torchkron.experiments.mnist.compress`."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchkron.experiments.common.errors import UserError
from torchkron.experiments.mnist.compress import (
    DEFAULT_CHECKPOINT,
    DEFAULT_RANKS,
    DISTILL_TEMPERATURE,
    FINETUNE_EPOCHS,
    FINETUNE_LR,
    LAYERS,
    run_compress,
)
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.options import (
    add_jobs_argument,
    add_recipe_arguments,
    add_run_arguments,
    run_options,
)
from torchkron.experiments.options import (
    config_from,
    non_negative_float,
    positive_float,
    positive_int,
)

__all__ = ["add_arguments", "run"]


_LR_HELP = (
    "Adadelta learning rate of the fine-tuning (default %(default)s, not the recipe's 1.0: "
    "the converted net already sits near a good solution, and the recipe's rate, meant for "
    "a random init, takes steps large enough to undo much of the conversion before StepLR "
    "has decayed it; the scratch arm uses --scratch-lr)"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=DEFAULT_CHECKPOINT,
        help="dense model saved by reproduce or sweep (default %(default)s)",
    )
    p.add_argument(
        "--ranks",
        type=positive_int,
        nargs="+",
        default=list(DEFAULT_RANKS),
        metavar="R",
        help="Kronecker ranks (default 1 2 ... 16)",
    )
    p.add_argument(
        "--factors",
        type=positive_int,
        default=2,
        metavar="K",
        help="factors per layer, balanced shapes (default %(default)s)",
    )
    p.add_argument(
        "--layers",
        nargs="+",
        choices=LAYERS,
        default=list(LAYERS),
        help="layers to convert (default both; 'hidden' alone matches the sweep's "
        "dense-output configs, whose runs can then be reused)",
    )
    f = p.add_argument_group("conversion and fine-tuning of arm (b)")
    f.add_argument(
        "--calibration",
        type=positive_int,
        default=None,
        metavar="N",
        help="activation-aware conversion: each layer minimises its output error on the "
        "inputs it sees for the first N training images instead of its weight error "
        "(default: off, the nearest Kronecker weights)",
    )
    f.add_argument(
        "--distill",
        action="store_true",
        help="fine-tune by distillation: KL divergence to the dense source's predictions "
        "at --temperature (times T^2), instead of the labels' NLL",
    )
    f.add_argument(
        "--temperature",
        type=positive_float,
        default=None,
        metavar="T",
        help=f"softmax temperature of --distill (default {DISTILL_TEMPERATURE:g})",
    )
    f.add_argument(
        "--distill-alpha",
        type=non_negative_float,
        default=None,
        metavar="A",
        help="share of the label loss in --distill's loss: A * NLL + (1 - A) * T^2 KL "
        "(default 0: the teacher alone)",
    )
    f.add_argument(
        "--finetune-seeds",
        type=positive_int,
        default=1,
        metavar="S",
        help="fine-tune runs per rank, seeds 0..S-1 (the seed orders the data; default "
        "%(default)s)",
    )
    g = p.add_argument_group("scratch arm (c)")
    g.add_argument(
        "--scratch-epochs",
        type=positive_int,
        default=35,
        help="epochs of the from-scratch training (default %(default)s, the full recipe)",
    )
    g.add_argument(
        "--scratch-lr",
        type=positive_float,
        default=1.0,
        help="Adadelta lr of the from-scratch training (default %(default)s, the recipe's)",
    )
    g.add_argument(
        "--scratch-seeds",
        type=positive_int,
        default=3,
        help="seeds of the from-scratch training (default %(default)s)",
    )
    g.add_argument(
        "--reuse-from",
        type=Path,
        default=Path("results/sweep"),
        help="sweep folder whose finished runs of the same architecture, seed and recipe "
        "are copied instead of retrained (default %(default)s; ignored when absent)",
    )
    g.add_argument("--no-scratch", action="store_true", help="skip the scratch arm")
    add_jobs_argument(p, "scratch runs")
    p.add_argument("--no-plots", action="store_true", help="skip compress.png")
    p.add_argument(
        "--report-only",
        action="store_true",
        help="train nothing: rewrite compress.json, compress.md and compress.png from OUT/runs",
    )
    add_run_arguments(p, "runs/compress")
    add_recipe_arguments(
        p,
        epochs=FINETUNE_EPOCHS,
        lr=FINETUNE_LR,
        epochs_help="fine-tuning epochs after the conversion (default %(default)s)",
        lr_help=_LR_HELP,
    )


def run(args: argparse.Namespace) -> int:
    from torchkron.experiments.mnist.compress_report import compress_text, write_compress_report

    if args.report_only:
        from torchkron.experiments.mnist.report_files import rewrite_report

        return rewrite_report(
            args.out, write_compress_report, compress_text, plots=not args.no_plots
        )
    if args.factors < 2:
        raise UserError(
            f"--factors must be 2 or more (1 factor is the dense layer), got {args.factors}."
        )
    if not args.distill and (args.temperature is not None or args.distill_alpha is not None):
        given = "--temperature" if args.temperature is not None else "--distill-alpha"
        raise UserError(f"{given} sets up the distillation: add --distill, or drop {given}.")
    temperature = None
    if args.distill:
        temperature = DISTILL_TEMPERATURE if args.temperature is None else args.temperature
    config = config_from(
        TrainConfig,
        args,
        distill_temperature=temperature,
        distill_alpha=args.distill_alpha or 0.0,
    )
    scratch = None
    if not args.no_scratch:
        # The scratch arm trains on the labels, whatever the fine-tune arm does.
        scratch = config.with_(
            epochs=args.scratch_epochs,
            lr=args.scratch_lr,
            distill_temperature=None,
            distill_alpha=0.0,
        )
    markdown = run_compress(
        checkpoint=args.checkpoint,
        ranks=sorted(set(args.ranks)),
        factors=args.factors,
        layers=[name for name in LAYERS if name in args.layers],
        config=config,
        scratch_config=scratch,
        scratch_seeds=args.scratch_seeds,
        reuse_from=args.reuse_from,
        options=run_options(args),
        calibration=args.calibration,
        finetune_seeds=args.finetune_seeds,
    )
    print(f"report: {markdown}")
    return 0
