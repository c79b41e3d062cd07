"""Training runs: determinism, exact resume, run records, the flat optimizer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tests.experiments.synthetic import write_synthetic_mnist

from torchkron.experiments.common.checkpoints import RunPaths
from torchkron.experiments.common.errors import UserError
from torchkron.experiments.common.progress import EpochEvent
from torchkron.experiments.common.runs import load_run
from torchkron.experiments.data.mnist import load_mnist
from torchkron.experiments.mnist.config import TrainConfig
from torchkron.experiments.mnist.optim import FlatAdadelta
from torchkron.experiments.mnist.trainer import prepare_data, train_run
from torchkron.experiments.mnist.variants import build_mlp, get_variant

CONFIG = TrainConfig(epochs=3, batch_size=32, test_batch_size=50)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory):
    folder = write_synthetic_mnist(tmp_path_factory.mktemp("synthetic"))
    return prepare_data(load_mnist(folder, download=False), CONFIG)


def _run(data, out: Path, variant: str = "two-kron-mat-out-kron", seed: int = 0, **kw):
    paths = RunPaths.under(out, variant, seed)
    return train_run(get_variant(variant), seed, CONFIG, data, paths, command="test", **kw)


def test_record_has_every_field(data, tmp_path):
    record = _run(data, tmp_path)
    assert record == load_run(tmp_path / "runs" / "two-kron-mat-out-kron--seed0.json")
    assert record["complete"]
    assert record["weights"] == 1575
    assert record["config"] == CONFIG.to_dict()
    assert record["history"]["epoch"] == [1, 2, 3]
    for key in ("train_loss", "test_loss", "test_accuracy", "seconds"):
        assert len(record["history"][key]) == 3
    assert record["history"]["test_accuracy"][-1] > 50  # the synthetic task is learnable
    env = record["environment"]
    assert env["torch"] == torch.__version__
    assert "python" in env
    assert "git_sha" in env
    assert record["command"] == "test"
    assert record["finished_at"]
    assert (tmp_path / "models" / "two-kron-mat-out-kron--seed0.pt").exists()


def test_same_seed_same_numbers_and_seeds_differ(data, tmp_path):
    a = _run(data, tmp_path / "a")["history"]
    b = _run(data, tmp_path / "b")["history"]
    c = _run(data, tmp_path / "c", seed=1)["history"]
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert a[key] == b[key]
    assert a["train_loss"] != c["train_loss"]


class _Stop(Exception):
    pass


@pytest.mark.parametrize("variant", ["original", "one-kron-mat-out-kron"])
def test_resume_ends_with_the_numbers_of_an_uninterrupted_run(data, tmp_path, variant):
    full = _run(data, tmp_path / "full", variant)

    def stop_after_two(ev: EpochEvent) -> None:
        if ev.epoch == 2:
            raise _Stop

    with pytest.raises(_Stop):
        _run(data, tmp_path / "cut", variant, on_epoch=stop_after_two)
    partial = load_run(tmp_path / "cut" / "runs" / f"{variant}--seed0.json")
    assert not partial["complete"]
    assert partial["history"]["epoch"] == [1, 2]
    events: list[EpochEvent] = []
    resumed = _run(data, tmp_path / "cut", variant, on_epoch=events.append)
    assert [e.epoch for e in events] == [3]
    assert events[0].resumed_from == 2
    for key in ("train_loss", "test_loss", "test_accuracy"):
        assert resumed["history"][key] == full["history"][key]
    a = torch.load(tmp_path / "full" / "models" / f"{variant}--seed0.pt", weights_only=True)
    b = torch.load(tmp_path / "cut" / "models" / f"{variant}--seed0.pt", weights_only=True)
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k])


def test_finished_run_is_not_redone(data, tmp_path):
    first = _run(data, tmp_path)
    events: list[EpochEvent] = []
    again = _run(data, tmp_path, on_epoch=events.append)
    assert events == []
    assert again == first


def test_resume_with_other_config_is_refused(data, tmp_path):
    _run(data, tmp_path)
    paths = RunPaths.under(tmp_path, "two-kron-mat-out-kron", 0)
    other = CONFIG.with_(lr=0.5)
    with pytest.raises(
        UserError, match=r"was trained with another config \(lr: saved 1.0 vs now 0.5\)"
    ):
        train_run(get_variant("two-kron-mat-out-kron"), 0, other, data, paths, command="x")


def test_corrupt_checkpoint_is_reported(data, tmp_path):
    paths = RunPaths.under(tmp_path, "dense-h2", 0)
    paths.checkpoint.parent.mkdir(parents=True)
    paths.checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"dense-h2--seed0.pt cannot be loaded .* delete it"):
        train_run(get_variant("dense-h2"), 0, CONFIG, data, paths, command="x")


@pytest.mark.parametrize("variant", ["original", "one-kron-mat", "two-kron-mat-out-kron"])
def test_flat_adadelta_is_bitwise_torch_adadelta(variant):
    torch.manual_seed(0)
    ours = build_mlp(get_variant(variant))
    ref = build_mlp(get_variant(variant))
    ref.load_state_dict(ours.state_dict())
    opt_a = FlatAdadelta(ours.parameters(), lr=1.0)
    opt_b = torch.optim.Adadelta(ref.parameters(), lr=1.0, foreach=True)
    sched_a = torch.optim.lr_scheduler.StepLR(opt_a, 1, gamma=0.7)
    sched_b = torch.optim.lr_scheduler.StepLR(opt_b, 1, gamma=0.7)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        x = torch.randn(16, 784, generator=g)
        y = torch.randint(0, 10, (16,), generator=g)
        for model, opt in ((ours, opt_a), (ref, opt_b)):
            opt.zero_grad()
            torch.nn.functional.nll_loss(model(x), y).backward()
            opt.step()
        if step % 2:
            sched_a.step()
            sched_b.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_flat_adadelta_state_dict_round_trip():
    torch.manual_seed(0)
    model = build_mlp(get_variant("one-kron-mat"))
    opt = FlatAdadelta(model.parameters())
    x, y = torch.randn(8, 784), torch.randint(0, 10, (8,))

    def step(m, o):
        o.zero_grad()
        torch.nn.functional.nll_loss(m(x), y).backward()
        o.step()

    step(model, opt)
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    saved_model = {k: v.clone() for k, v in saved_model.items()}
    saved_opt = {
        "state": {k: {n: t.clone() for n, t in v.items()} for k, v in saved_opt["state"].items()},
        "param_groups": saved_opt["param_groups"],
    }
    step(model, opt)
    torch.manual_seed(5)
    clone = build_mlp(get_variant("one-kron-mat"))
    opt2 = FlatAdadelta(clone.parameters())
    clone.load_state_dict(saved_model)
    opt2.load_state_dict(saved_opt)
    step(clone, opt2)
    for a, b in zip(model.parameters(), clone.parameters(), strict=True):
        assert torch.equal(a, b)
    # Gradients still land in the flat buffer after loading.
    assert opt2._grad.abs().sum() > 0


def _teacher(data) -> torch.Tensor:
    torch.manual_seed(7)
    teacher = build_mlp(get_variant("dense-h2")).eval()
    with torch.no_grad():
        return teacher(data.train_x)  # (N, 10) log-probabilities


def test_distillation_with_the_whole_share_on_the_labels_is_label_training(data, tmp_path):
    """``distill_alpha=1`` weighs the KL term by 0: the run must match label training
    step for step, which checks that the teacher's rows follow the shuffled batches."""
    paths = RunPaths.under(tmp_path / "kd", "dense-h2", 0)
    config = CONFIG.with_(distill_temperature=3.0, distill_alpha=1.0)
    spec = get_variant("dense-h2")
    kd = train_run(spec, 0, config, data, paths, command="t", teacher=_teacher(data))
    labels = _run(data, tmp_path / "labels", variant="dense-h2")
    assert kd["history"]["train_loss"] == labels["history"]["train_loss"]
    assert kd["config"]["distill_temperature"] == 3.0


def test_distillation_follows_the_teacher(data, tmp_path):
    """Pure distillation from a teacher that predicts the labels perfectly learns the
    task; from a teacher that always predicts class 0, it does not."""
    config = CONFIG.with_(distill_temperature=1.0)
    spec = get_variant("two-kron-mat-out-kron")
    perfect = torch.log_softmax(20.0 * torch.nn.functional.one_hot(data.train_y, 10).float(), 1)
    wrong = torch.log_softmax(20.0 * torch.nn.functional.one_hot(0 * data.train_y, 10).float(), 1)
    good = train_run(
        spec, 0, config, data, RunPaths.under(tmp_path / "a", "x", 0), command="t", teacher=perfect
    )
    bad = train_run(
        spec, 0, config, data, RunPaths.under(tmp_path / "b", "x", 0), command="t", teacher=wrong
    )
    assert good["history"]["test_accuracy"][-1] > 50
    assert bad["history"]["test_accuracy"][-1] < 20


def test_a_teacher_goes_with_a_distillation_config(data, tmp_path):
    spec, paths = get_variant("dense-h2"), RunPaths.under(tmp_path, "dense-h2", 0)
    both = "train_run: a teacher's predictions go with config.distill_temperature; give both"
    with pytest.raises(ValueError, match=both):
        train_run(spec, 0, CONFIG.with_(distill_temperature=2.0), data, paths, command="t")
    with pytest.raises(ValueError, match=both):
        train_run(spec, 0, CONFIG, data, paths, command="t", teacher=_teacher(data))
    config = CONFIG.with_(distill_temperature=2.0)
    with pytest.raises(ValueError, match=r"the teacher has 3 rows for 192 training images"):
        train_run(spec, 0, config, data, paths, command="t", teacher=torch.zeros(3, 10))
