"""The compression study (``torchkron compress``): convert a trained dense MLP to Kronecker
layers, then fine-tune.

For each rank ``R`` the dense model's Linear layers are replaced by
``kronify(..., from_dense=True)`` (the nearest sum of ``R`` Kronecker products, balanced
``k``-factor shapes) and the converted net is evaluated; then it is fine-tuned for
``--epochs`` with the recipe. The same Kronecker architecture is also trained from scratch
on the full recipe (reusing matching sweep runs), so the report can compare, at equal
weight counts: (a) converted only, (b) converted + fine-tuned, (c) trained from scratch.

Two options change the fine-tune arm (each off by default, where the arm is as it was):

- ``calibration=N``: activation-aware conversion, ``kronify(..., calibration=batches)``
  with the first ``N`` training images as calibration batches (each layer minimises its
  output error on the inputs it sees instead of its weight error);
- ``TrainConfig.distill_temperature``: fine-tuning by distillation from the dense
  source's predictions (:func:`~torchkron.experiments.common.compression.distillation_loss`,
  optionally mixed with the label loss by ``distill_alpha``).

A run with either records ``calibration`` / ``distill`` in its ``extra.compress`` block
and both layer errors on held data (the test images): ``output_error`` (its conversion)
and ``plain_output_error`` (the plain conversion at the same rank), each the relative
``||(W - W_hat) X|| / ||W X||`` over the inputs the dense layer sees, and the plain
conversion's test accuracy ``plain_converted`` (measured by the same code); its name gets
``-cal<N>`` / ``-kd<T>`` (``-a<alpha>``) suffixes, so runs of other settings never share
a file and the run files of the default arm keep their names.

Outputs in ``OUT``: ``runs/finetune-k2-r4-all--seed0.json`` (run records whose
``extra.compress`` holds the approximation error per layer and the accuracy of the dense
and the converted net), ``runs/scratch-k2-r4-all--seed<k>.json``, ``compress.json``,
``compress.md``, ``compress.png`` (:mod:`torchkron.experiments.mnist.compress_report`) and
``compress.log``.
"""

from __future__ import annotations

import copy
import hashlib
import io
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from torchkron.experiments.common.compression import input_moments
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.files import atomic_write_json
from torchkron.experiments.common.runs import RunRecord, load_run
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.report_files import finish_report
from torchkron.experiments.mnist.runner import RunOptions
from torchkron.experiments.mnist.variants import LayerSpec, MLPSpec, build_mlp
from torchkron.factorization import output_error
from torchkron.surgery import KronifyReport, kronify

__all__ = [
    "DEFAULT_CHECKPOINT",
    "DEFAULT_RANKS",
    "DISTILL_TEMPERATURE",
    "FINETUNE_EPOCHS",
    "FINETUNE_LR",
    "LAYERS",
    "Source",
    "arm_name",
    "calibration_batches",
    "convert",
    "converted_spec",
    "held_moments",
    "layer_errors",
    "load_source",
    "run_compress",
]

DEFAULT_CHECKPOINT = Path("runs/mnist/models/original--seed0.pt")
DEFAULT_RANKS = tuple(range(1, 17))
LAYERS = ("hidden", "output")
FINETUNE_EPOCHS = 5
#: Adadelta lr for fine-tuning; see the --lr help for why it is below the recipe's 1.0.
FINETUNE_LR = 0.1
LOG_FILE = "compress.log"
#: Softmax temperature of ``compress --distill`` unless ``--temperature`` is given.
DISTILL_TEMPERATURE = 4.0


@dataclass(frozen=True)
class Source:
    """A trained dense MLP checkpoint, validated."""

    path: Path
    spec: MLPSpec
    state_dict: dict[str, Tensor]
    sha256: str
    record: RunRecord | None  # the run record saved beside it (../runs/<stem>.json), if any

    def info(self) -> dict[str, Any]:
        """What the run records keep about the source."""
        config = self.record.get("config") if self.record else None
        return {
            "checkpoint": str(self.path),
            "sha256": self.sha256,
            "variant": self.spec.name,
            "weights": self.spec.weights(),
            "seed": self.record.get("seed") if self.record else None,
            "epochs": config.get("epochs") if config else None,
            "config": config,
        }


def load_source(path: Path) -> Source:
    """Read and check a dense model checkpoint (``{"spec", "state_dict"}``).

    Raises:
        UserError: the file is missing, unreadable, not a torchkron model, not dense, or
            its weights do not fit its spec; the message says how to fix it.
    """
    if not path.is_file():
        raise UserError(
            f"No model checkpoint at {path}. Train the dense model first with `torchkron "
            "reproduce --variants original` (it saves runs/mnist/models/"
            "original--seed0.pt), or pass --checkpoint with a dense model's .pt file."
        )
    data = path.read_bytes()
    try:
        saved = torch.load(io.BytesIO(data), weights_only=True)
    except (RuntimeError, EOFError, ValueError, pickle.UnpicklingError, OSError) as exc:
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise UserError(
            f"{path} cannot be loaded as a torch checkpoint ({type(exc).__name__}: {first}); "
            "it is truncated or corrupt: retrain that run, or pass another --checkpoint."
        ) from None
    if not isinstance(saved, dict) or not {"spec", "state_dict"} <= set(saved):
        raise UserError(
            f"{path} is not a torchkron model file (expected a dict with 'spec' and "
            "'state_dict', as OUT/models/<variant>--seed<k>.pt of reproduce or sweep)."
        )
    try:
        spec = MLPSpec.from_dict(saved["spec"])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} has an unreadable model spec ({exc!r}).") from None
    layers = (("hidden", spec.hidden), ("output", spec.output))
    kron = [n for n, layer in layers if layer.linear.kind != "dense"]
    if kron:
        kinds = {layer.linear.kind for _, layer in layers} - {"dense"}
        already = "Kronecker" if kinds == {"kron"} else "structured (low-rank)"
        raise UserError(
            f"{path} holds {spec.name!r}, whose {' and '.join(kron)} layer is already "
            f"{already}; compress converts dense models: pass a dense run's checkpoint such "
            "as runs/mnist/models/original--seed0.pt."
        )
    model = build_mlp(spec)
    try:
        model.load_state_dict(saved["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0][:160]
        raise UserError(
            f"{path}: the saved weights do not fit its spec {spec.name!r} ({first}); the file "
            "is damaged: retrain that run, or pass another --checkpoint."
        ) from None
    record_path = path.parent.parent / "runs" / f"{path.stem}.json"
    record = None
    if record_path.is_file():
        try:
            record = load_run(record_path)
        except UserError:
            record = None  # the run record only adds context; the model is what matters
    return Source(path, spec, dict(model.state_dict()), hashlib.sha256(data).hexdigest(), record)


def dense_model(source: Source) -> nn.Module:
    """The source's model with its trained weights."""
    model = build_mlp(source.spec)
    model.load_state_dict(source.state_dict)
    return model


def convert(
    model: nn.Module,
    *,
    layers: Sequence[str],
    factors: int,
    rank: int,
    calibration: Sequence[Tensor] | None = None,
) -> tuple[nn.Module, KronifyReport]:
    """A copy of ``model`` with ``layers`` replaced by their nearest rank-``rank``
    ``factors``-factor Kronecker layers (balanced shapes); ``model`` is left unchanged.

    With ``calibration`` (batches of images) each layer minimises its output error on the
    inputs it sees in those batches instead of its weight error (activation-aware)."""
    converted = copy.deepcopy(model)
    return kronify(
        converted,
        target=list(layers),
        num_factors=factors,
        rank=rank,
        from_dense=True,
        calibration=calibration,
    )


def calibration_batches(train_x: Tensor, count: int, batch: int) -> list[Tensor]:
    """The first ``count`` training images in batches of ``batch``.

    Raises:
        UserError: ``count`` is more than the training set holds.
    """
    if count > train_x.shape[0]:
        raise UserError(
            f"--calibration {count} asks for more calibration images than the training set "
            f"holds ({train_x.shape[0]}); pass at most {train_x.shape[0]}."
        )
    return [train_x[i : min(i + batch, count)] for i in range(0, count, batch)]


def held_moments(
    dense: nn.Module, layers: Sequence[str], x: Tensor, batch: int
) -> dict[str, Tensor]:
    """``{layer: E[x x^T]}`` of the inputs each of ``layers`` sees in ``dense`` on the
    images ``x`` (the held data of :func:`layer_errors`)."""
    batches = [x[i : i + batch] for i in range(0, x.shape[0], batch)]
    return input_moments(dense, list(layers), batches)


def layer_errors(
    dense: nn.Module,
    converted: nn.Module,
    layers: Sequence[str],
    moments: Mapping[str, Tensor] | None = None,
) -> dict[str, float]:
    """``{layer: ||(W - W_hat) X|| / ||W X||}`` for every layer of ``layers`` that
    ``converted`` replaced, ``X`` the inputs behind ``moments`` (:func:`held_moments`);
    without ``moments`` the relative weight error ``||W - W_hat||_F / ||W||_F``."""
    modules, dense_modules = dict(converted.named_modules()), dict(dense.named_modules())
    return {
        name: output_error(
            dense_modules[name].weight.detach(),
            modules[name].weight.detach(),
            None if moments is None else moments[name],
        )
        for name in layers
        if not isinstance(modules[name], nn.Linear)
    }


def layers_tag(layers: Sequence[str]) -> str:
    """``all`` for both layers, else the one layer's name."""
    chosen = [name for name in LAYERS if name in layers]
    return "all" if chosen == list(LAYERS) else "-".join(chosen)


def setting_tag(calibration: int | None, config: TrainConfig | None) -> str:
    """The fine-tune arm's setting in a run name: ``""`` for the default (plain
    conversion, label fine-tuning), else ``-cal<N>`` and/or ``-kd<T>`` (``-a<alpha>``)."""
    tag = "" if calibration is None else f"-cal{calibration}"
    if config is not None and config.distill_temperature is not None:
        tag += f"-kd{config.distill_temperature:g}"
        if config.distill_alpha:
            tag += f"-a{config.distill_alpha:g}"
    return tag


def arm_name(arm: str, factors: int, rank: int, layers: Sequence[str], setting: str = "") -> str:
    """A compress run's variant id, e.g. ``finetune-k2-r4-all`` or, activation-aware with
    distillation, ``finetune-k2-r4-all-cal1024-kd4`` (``setting``: :func:`setting_tag`)."""
    return f"{arm}-k{factors}-r{rank}-{layers_tag(layers)}{setting}"


def converted_spec(
    source: MLPSpec,
    report: KronifyReport,
    *,
    arm: str,
    factors: int,
    rank: int,
    layers: Sequence[str],
    extra: dict[str, Any],
    setting: str = "",
) -> MLPSpec:
    """The spec of the converted architecture (layers that were skipped stay dense);
    ``setting`` (:func:`setting_tag`) tells fine-tune arms of other settings apart."""
    replaced = {r.name: r for r in report.replaced}

    def layer(name: str, dense: LayerSpec) -> LayerSpec:
        r = replaced.get(name)
        if r is None:
            return dense
        return LayerSpec.kron(dense.in_features, dense.out_features, r.shapes, rank=r.rank)

    hidden, output = layer("hidden", source.hidden), layer("output", source.output)
    what = "converted from" if arm == "finetune" else "trained from scratch, as"
    if setting:
        block = extra.get("compress", {})
        how = []
        if block.get("calibration"):
            how.append(f"activation-aware, {block['calibration']} calibration images")
        if block.get("distill"):
            d = block["distill"]
            how.append(f"distilled at T={d['temperature']:g}, label share {d['alpha']:g}")
        what = f"converted ({'; '.join(how)}) from"
    return MLPSpec(
        arm_name(arm, factors, rank, layers, setting),
        f"{what} {source.name}: input-hidden = {hidden.describe()}, "
        f"hidden-output = {output.describe()}",
        hidden,
        output,
        family=f"compress-{arm}",
        order=rank + (0 if arm == "finetune" else 100),
        extra=extra,
    )


def _conversion_info(
    report: KronifyReport, dense_eval: tuple[float, float], converted_eval: tuple[float, float]
) -> dict[str, Any]:
    return {
        "approximation_error": {r.name: r.approximation_error for r in report.replaced},
        "shapes": {r.name: [list(s) for s in r.shapes] for r in report.replaced},
        "skipped": {r.name: r.reason for r in report.skipped},
        "dense": {"test_loss": dense_eval[0], "test_accuracy": dense_eval[1]},
        "converted": {"test_loss": converted_eval[0], "test_accuracy": converted_eval[1]},
    }


def _loader(state: dict[str, Tensor]) -> Callable[[nn.Module], None]:
    """A ``train_run`` model hook that loads the converted weights into the fresh model."""

    def load(model: nn.Module) -> None:
        model.load_state_dict(state)

    return load


def _same_layers(record: RunRecord, spec: MLPSpec) -> bool:
    mine = spec.to_dict()
    theirs = record.get("spec") or {}
    return bool(theirs.get("hidden") == mine["hidden"] and theirs.get("output") == mine["output"])


def _check_matches(path: Path, spec: MLPSpec, source: Source) -> None:
    """An existing run of this id must be of the same architecture and source model."""
    if not path.exists():
        return
    record = load_run(path)
    block = (record.get("extra") or {}).get("compress") or {}
    sha = (block.get("source") or {}).get("sha256")
    if not _same_layers(record, spec) or (block.get("arm") == "finetune" and sha != source.sha256):
        raise UserError(
            f"{path} was made from another checkpoint or architecture than this command's "
            f"({source.path}); use another --out folder, or delete that run to redo it."
        )


def _reuse_scratch(
    specs: Sequence[MLPSpec], seeds: int, config: TrainConfig, out_dir: Path, reuse: Path | None
) -> list[str]:
    """Copy finished sweep runs of the same architecture, seed and recipe into ``out_dir``
    as scratch runs, so they are not trained twice; returns the copied file names."""
    from torchkron.experiments.common.checkpoints import RunPaths
    from torchkron.experiments.mnist.trainer import spec_fields

    runs_dir = None if reuse is None else reuse / "runs"
    if runs_dir is None or not runs_dir.is_dir():
        return []
    found: list[tuple[Path, RunRecord]] = []
    for path in sorted(runs_dir.glob("*.json")):
        try:
            record = load_run(path)
        except UserError:
            continue  # a broken sweep file is the sweep's business; train instead
        if record.get("complete"):
            found.append((path, record))
    copied = []
    for spec in specs:
        for seed in range(seeds):
            target = RunPaths.under(out_dir, spec.name, seed).record
            if target.exists():
                continue
            for path, record in found:
                saved = TrainConfig.from_dict(record["config"]).with_(threads=config.threads)
                if record["seed"] == seed and saved == config and _same_layers(record, spec):
                    block = dict(spec.extra.get("compress", {}), reused_from=str(path))
                    atomic_write_json(
                        target,
                        {
                            **record,
                            **spec_fields(spec),
                            "extra": {**spec.extra, "compress": block},
                        },
                    )
                    copied.append(target.name)
                    break
    return copied


def _teacher_predictions(dense: nn.Module, x: Tensor, batch: int) -> Tensor:
    """The dense source's log-probabilities ``(N, classes)`` on the training images."""
    dense.eval()
    with torch.inference_mode():
        return torch.cat([dense(x[i : i + batch]) for i in range(0, x.shape[0], batch)])


def run_compress(
    *,
    checkpoint: Path,
    ranks: Sequence[int],
    factors: int,
    layers: Sequence[str],
    config: TrainConfig,
    scratch_config: TrainConfig | None,
    scratch_seeds: int,
    reuse_from: Path | None,
    options: RunOptions,
    calibration: int | None = None,
    finetune_seeds: int = 1,
) -> Path:
    """Convert, evaluate and fine-tune at every rank, train the scratch arm, write the
    report; returns the path of ``compress.md``.

    ``calibration``: convert activation-aware with that many training images;
    ``config.distill_temperature``: fine-tune by distillation from the dense source;
    ``finetune_seeds``: fine-tune runs per rank (seeds 0, 1, ...; the seed orders the
    data, the conversion is the same)."""
    from torchkron.experiments.common.checkpoints import RunPaths
    from torchkron.experiments.mnist.compress_report import compress_text, write_compress_report
    from torchkron.experiments.mnist.runner import Job, open_session, run_jobs, track
    from torchkron.experiments.mnist.trainer import evaluate, prepare_data, train_run

    if config.threads:
        # The recipe's thread count from the start: the SVDs of the conversion are slowed
        # badly by oversubscribed threads on a busy machine.
        torch.set_num_threads(config.threads)
    source = load_source(checkpoint)
    dense = dense_model(source)
    plain = {r: convert(dense, layers=layers, factors=factors, rank=r) for r in ranks}
    first = plain[ranks[0]][1]
    if not first.replaced:
        reasons = "; ".join(f"{r.name}: {r.reason}" for r in first.skipped)
        raise UserError(f"No layer of {source.spec.name} can be converted: {reasons}")
    common: dict[str, Any] = {"factors": factors, "layers": list(layers), "source": source.info()}
    setting = setting_tag(calibration, config)
    distill = config.distill_temperature is not None
    if calibration is not None:
        common["calibration"] = calibration
    if distill:
        common["distill"] = {
            "temperature": config.distill_temperature,
            "alpha": config.distill_alpha,
        }

    def spec_for(rank: int, arm: str, extra: dict[str, Any]) -> MLPSpec:
        if arm == "finetune":
            block = {"arm": arm, "rank": rank, **common, **extra}
        else:  # the scratch arm does not depend on the fine-tune's setting
            keep = ("factors", "layers", "source")
            block = {"arm": arm, "rank": rank, **{k: common[k] for k in keep}, **extra}
        return converted_spec(
            source.spec,
            plain[rank][1],
            arm=arm,
            factors=factors,
            rank=rank,
            layers=layers,
            extra={"compress": block},
            setting=setting if arm == "finetune" else "",
        )

    scratch = [spec_for(r, "scratch", {"reused_from": None}) for r in ranks]
    finetune_jobs = [
        Job(spec_for(r, "finetune", {}), seed) for r in ranks for seed in range(finetune_seeds)
    ]
    scratch_jobs = [Job(s, seed) for s in scratch for seed in range(scratch_seeds)]
    if scratch_config is None:
        scratch_jobs = []
    out_dir, command = options.out_dir, options.command
    for job in finetune_jobs + scratch_jobs:
        _check_matches(RunPaths.under(out_dir, job.spec.name, job.seed).record, job.spec, source)
    with open_session(finetune_jobs + scratch_jobs, options, LOG_FILE) as (progress, mnist):
        if scratch_config is not None:
            reused = _reuse_scratch(scratch, scratch_seeds, scratch_config, out_dir, reuse_from)
            if reused:
                progress.message(f"reused {len(reused)} finished run(s) from {reuse_from}")
        track(progress, finetune_jobs, out_dir, config.epochs)
        if scratch_config is not None:
            track(progress, scratch_jobs, out_dir, scratch_config.epochs)
        data = prepare_data(mnist, config)
        start = time.perf_counter()
        dense.eval()
        dense_eval = evaluate(dense, data.test_x, data.test_y, config.test_batch_size)
        progress.message(
            f"source {source.path}: {source.spec.name}, {source.spec.weights():,} weights, test "
            f"accuracy {dense_eval[1]:.2f}%"
        )
        conversions = plain
        if calibration is not None:
            batches = calibration_batches(data.train_x, calibration, config.test_batch_size)
            conversions = {
                r: convert(dense, layers=layers, factors=factors, rank=r, calibration=batches)
                for r in ranks
            }
        held = held_moments(dense, layers, data.test_x, config.test_batch_size) if setting else {}
        plain_errors = (
            {r: layer_errors(dense, plain[r][0], layers, held) for r in ranks} if setting else {}
        )
        teacher = None
        if distill:
            teacher = _teacher_predictions(dense, data.train_x, config.test_batch_size)
        for job in finetune_jobs:
            rank = int(job.spec.extra["compress"]["rank"])
            model, report = conversions[rank]
            model.eval()
            # The metric of the training history (trainer.evaluate), so (a) and (b) compare.
            converted_eval = evaluate(model, data.test_x, data.test_y, config.test_batch_size)
            info = _conversion_info(report, dense_eval, converted_eval)
            if calibration is not None:
                # kronify's error is the output error on the calibration inputs; the
                # table's column stays the weight error of every other run.
                info["calibration_error"] = info["approximation_error"]
                info["approximation_error"] = layer_errors(dense, model, layers)
            if setting:
                info["output_error"] = layer_errors(dense, model, layers, held)
                info["plain_output_error"] = plain_errors[rank]
                # The plain conversion's accuracy, measured by this code like the run's own.
                plain_model = plain[rank][0].eval()
                loss, acc = evaluate(plain_model, data.test_x, data.test_y, config.test_batch_size)
                info["plain_converted"] = {"test_loss": loss, "test_accuracy": acc}
            spec = spec_for(rank, "finetune", info)
            errors = ", ".join(f"{k} {v:.4f}" for k, v in info["approximation_error"].items())
            if job.seed == 0:
                progress.message(
                    f"rank {rank}: {spec.weights():,} weights, approximation error {errors}; "
                    f"test accuracy after conversion {converted_eval[1]:.2f}%"
                )
            state = model.state_dict()
            train_run(
                spec,
                job.seed,
                config,
                data,
                RunPaths.under(out_dir, spec.name, job.seed),
                command=command,
                on_epoch=progress.epoch,
                model_hook=_loader(state),
                teacher=teacher,
            )
        if scratch_config is not None and scratch_jobs:
            # The fine-tune's prepared tensors serve the scratch arm too (same data config).
            same_data = scratch_config.train_limit == config.train_limit
            run_jobs(
                scratch_jobs,
                scratch_config,
                options,
                mnist,
                progress=progress,
                data=data if same_data and scratch_config.test_limit == config.test_limit else None,
            )
        return finish_report(
            progress,
            start,
            "report",
            write_compress_report,
            compress_text,
            out_dir=out_dir,
            plots=options.plots,
        )
