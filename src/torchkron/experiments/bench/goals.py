"""The benchmark issues' goals, judged on a suite's results."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchkron.experiments.bench.shapes import (
    BF16_GOALS,
    GOALS,
    MEMORY_GOAL_BYTES,
    NO_DENSE,
    BenchShape,
)
from torchkron.functional import dense_flops, kron_flops

__all__ = ["RANK_GOALS", "evaluate_goals"]

# Issue 11 at 768->3072 (64x32 (x) 48x24, 1024 rows): the training-step time ratio
# against dense within 1.5x of the FLOP ratio, rank 4 at least 3x, rank 16 at least 1x.
RANK_GOALS: dict[str, float] = {"768-3072-r4-b1024": 3.0, "768-3072-r16-b1024": 1.0}


def evaluate_goals(
    results: list[dict[str, Any]], shapes: Sequence[BenchShape] = ()
) -> list[dict[str, Any]]:
    """The issues' goals, evaluated on these results."""
    goals: list[dict[str, Any]] = []
    flop_ratio = {
        s.name: dense_flops(s.in_features, s.out_features)
        / kron_flops([o for o, _ in s.factors], [n for _, n in s.factors], s.rank)
        for s in shapes
    }
    train_time = {
        (r["shape"], r["dtype"], r["contender"]): r["median_s"]
        for r in results
        if r["status"] == "ok" and r["mode"] == "train"
    }
    train_or_fwd = {
        (r["shape"], r["dtype"], r["mode"], r["contender"]): r["median_s"]
        for r in results
        if r["status"] == "ok"
    }
    for r in results:
        if r["status"] != "ok" or r["contender"] != "KronLinear":
            continue
        where = {"shape": r["shape"], "dtype": r["dtype"], "mode": r["mode"]}
        if r["mode"] == "train" and r["shape"] in GOALS and r.get("ratio_vs_dense"):
            target = GOALS[r["shape"]]
            goal = f"KronLinear train >= {target:g}x nn.Linear"
            value = r["ratio_vs_dense"]
            goals.append({"goal": goal, **where, "value": value, "met": value >= target})
        if (
            r["mode"] in ("train", "train_graph")
            and r["dtype"] == "bfloat16"
            and r["shape"] in BF16_GOALS
            and r.get("ratio_vs_dense")
        ):
            target = BF16_GOALS[r["shape"]]
            goal = f"KronLinear bfloat16 train >= {target:g}x nn.Linear (GPU)"
            value = r["ratio_vs_dense"]
            goals.append({"goal": goal, **where, "value": value, "met": value >= target})
        if r["mode"] == "train" and r["shape"] in RANK_GOALS and r.get("ratio_vs_dense"):
            target = RANK_GOALS[r["shape"]]
            goal = f"KronLinear train >= {target:g}x nn.Linear"
            value = r["ratio_vs_dense"]
            goals.append({"goal": goal, **where, "value": value, "met": value >= target})
        if r["mode"] == "train" and r["shape"].startswith("768-3072-r") and r.get("ratio_vs_dense"):
            target = flop_ratio.get(r["shape"], 0.0) / 1.5
            goal = f"KronLinear train time ratio >= FLOP ratio / 1.5 ({target:.2f}x)"
            value = r["ratio_vs_dense"]
            goals.append({"goal": goal, **where, "value": value, "met": value >= target})
        if r["mode"] == "train_sumgrad":
            base_t = train_time.get((r["shape"], r["dtype"], r["contender"]))
            if base_t:
                value = base_t / r["median_s"]
                goal = "KronLinear .sum().backward() within 10% of a contiguous gradient"
                goals.append({"goal": goal, **where, "value": value, "met": value >= 1 / 1.1})
            continue
        pair = [
            train_or_fwd.get((r["shape"], r["dtype"], r["mode"], n))
            for n in ("torchkron:bmm", "torchkron:materialize")
        ]
        if all(pair):
            fastest = min(p for p in pair if p)
            pick = r.get("auto_impl")
            picked = train_or_fwd.get((r["shape"], r["dtype"], r["mode"], f"torchkron:{pick}"))
            # The first row times KronLinear itself; the second judges the choice alone from
            # the plans' own times (KronLinear runs the picked plan's code, so the first also
            # holds run-to-run noise between the two).
            for goal, took in (
                (
                    "auto (KronLinear) within 10% of the faster of bmm and materialize",
                    r["median_s"],
                ),
                (
                    "auto's pick within 10% of the faster of bmm and materialize (their times)",
                    picked,
                ),
            ):
                if took:
                    value = fastest / took
                    goals.append(
                        {
                            "goal": goal,
                            **where,
                            "value": value,
                            "pick": pick,
                            "met": value >= 1 / 1.1,
                        }
                    )
        value = r["ratio_vs_best"]
        goal = "KronLinear within 10% of the best contender"
        met = value >= 1 / 1.1
        goals.append({"goal": goal, **where, "value": value, "best": r.get("best"), "met": met})
        if "peak_step_bytes" in r and r["shape"] in NO_DENSE:
            value = r["peak_step_bytes"] + r["resident_bytes"]
            goal = "training-step peak memory < 1 GiB (no dense W)"
            goals.append({"goal": goal, **where, "value": value, "met": value < MEMORY_GOAL_BYTES})
    return goals
