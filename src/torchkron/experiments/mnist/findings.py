"""The seed's four claims, checked against a summary with numbers.

Each claim compares mean final test accuracies (percent) of variants over seeds. A
difference counts as *beyond seed noise* when ``|diff| > NOISE_FACTOR * pooled_std``,
where ``pooled_std`` is the pooled sample standard deviation of the two variants'
final accuracies: a simple, stated criterion, not a significance test. With one seed
per variant the pooled std is 0, so any nonzero difference counts as beyond noise; such a
comparison says that seed noise was not measured (n = 1), and so does its finding.

The claims and their criteria:

1. Kronecker input-hidden costs almost no accuracy: ``one-kron-mat`` and ``two-kron-mat``
   each at most :data:`ACCURACY_TOLERANCE_PP` below ``original``.
2. Sharing the factor costs none: ``one-kron-mat`` is better than ``two-kron-mat``, or
   the difference is within seed noise.
3. Kronecker hidden-output loses clearly: each ``*-out-kron`` variant is below its
   counterpart without it by more than seed noise and by more than
   :data:`MIN_CLEAR_LOSS_PP`.
4. The equal-size dense net is worse: each dense baseline is below the Kronecker
   variant it matches (``matches``) by more than seed noise.

A claim's ``holds`` is None when none of the variants it needs was run; when some are
missing, it is judged on the comparisons available and the evidence names the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "ACCURACY_TOLERANCE_PP",
    "MIN_CLEAR_LOSS_PP",
    "NOISE_FACTOR",
    "NOT_MEASURED",
    "Comparison",
    "compare",
    "findings",
    "pooled_std",
]

#: Claim 1: the most (percentage points) a Kronecker variant may lose to ``original``.
ACCURACY_TOLERANCE_PP = 1.0
#: A difference is beyond seed noise when it exceeds this many pooled standard deviations.
NOISE_FACTOR = 2.0
#: Claim 3: the least (percentage points) an out-kron variant must lose to count as clear.
MIN_CLEAR_LOSS_PP = 0.5

Variant = Mapping[str, Any]

_NOISE = f"|diff| > {NOISE_FACTOR:g} x pooled seed std"
#: What a verdict from one seed per variant says about seed noise.
NOT_MEASURED = "n = 1"


def pooled_std(std_a: float, n_a: int, std_b: float, n_b: int) -> float:
    """Pooled sample std of two groups; 0 when neither has two values."""
    dof = n_a + n_b - 2
    if dof <= 0:
        return 0.0
    return math.sqrt(((n_a - 1) * std_a**2 + (n_b - 1) * std_b**2) / dof)


@dataclass(frozen=True)
class Comparison:
    """Variant ``a`` against variant ``b`` on mean final test accuracy (percent)."""

    a: str
    b: str
    a_mean: float
    a_std: float
    a_seeds: int
    b_mean: float
    b_std: float
    b_seeds: int
    diff: float  # a_mean - b_mean, percentage points
    pooled_std: float
    beyond_noise: bool

    @property
    def noise_measured(self) -> bool:
        """Whether the seeds give a spread at all (not one seed on each side)."""
        return self.a_seeds + self.b_seeds > 2

    def text(self) -> str:
        """``a m ± s % (n=..) vs b ...: diff pp, beyond/within seed noise (threshold)``, or
        ``..., seed noise not measured (n = 1)`` with one seed on each side."""
        head = (
            f"{self.a} {self.a_mean:.2f} ± {self.a_std:.2f} % (n={self.a_seeds}) vs "
            f"{self.b} {self.b_mean:.2f} ± {self.b_std:.2f} % (n={self.b_seeds}): "
            f"{self.diff:+.2f} pp, "
        )
        if not self.noise_measured:
            return head + f"seed noise not measured ({NOT_MEASURED})"
        where = "beyond" if self.beyond_noise else "within"
        return head + (
            f"{where} seed noise "
            f"({NOISE_FACTOR:g} x pooled std = {NOISE_FACTOR * self.pooled_std:.2f} pp)"
        )


def compare(a: Variant, b: Variant) -> Comparison:
    """Compare two summary variants' final test accuracy."""
    acc_a, acc_b = a["test_accuracy"], b["test_accuracy"]
    n_a, n_b = len(a["seeds"]), len(b["seeds"])
    diff = acc_a["mean"] - acc_b["mean"]
    pooled = pooled_std(acc_a["std"], n_a, acc_b["std"], n_b)
    return Comparison(
        a=a["name"],
        b=b["name"],
        a_mean=acc_a["mean"],
        a_std=acc_a["std"],
        a_seeds=n_a,
        b_mean=acc_b["mean"],
        b_std=acc_b["std"],
        b_seeds=n_b,
        diff=diff,
        pooled_std=pooled,
        beyond_noise=abs(diff) > NOISE_FACTOR * pooled,
    )


def _finding(
    ident: str,
    claim: str,
    criterion: str,
    pairs: Sequence[tuple[str, str]],
    variants: Mapping[str, Variant],
    passes: Callable[[Comparison], bool],
) -> dict[str, Any]:
    """Judge ``claim`` on every pair ``(a, b)`` whose two variants were run."""
    present = [(a, b) for a, b in pairs if a in variants and b in variants]
    missing = sorted({n for pair in pairs for n in pair if n not in variants})
    comparisons = [compare(variants[a], variants[b]) for a, b in present]
    holds = all(passes(c) for c in comparisons) if comparisons else None
    unmeasured = [c for c in comparisons if not c.noise_measured]
    if comparisons:
        evidence = "; ".join(c.text() for c in comparisons)
        if missing:
            evidence += f"; not run: {', '.join(missing)}"
        evidence += f". Criterion: {criterion}."
        if unmeasured:
            # A verdict from single runs is not a finding about the variants yet.
            evidence = (
                f"Seed noise not measured ({NOT_MEASURED}): {len(unmeasured)} of "
                f"{len(comparisons)} comparison(s) rest on one seed per variant, so the "
                f"verdict may not survive other seeds; rerun with --seeds 3. {evidence}"
            )
    else:
        evidence = f"Not tested: needs {', '.join(missing)} (not run). Criterion: {criterion}."
    finding: dict[str, Any] = {
        "id": ident,
        "claim": claim,
        "holds": holds,
        "evidence": evidence,
        "criterion": criterion,
        "comparisons": [asdict(c) for c in comparisons],
    }
    if unmeasured:
        finding["seed_noise"] = f"not measured ({NOT_MEASURED})"
    return finding


def _kron_input_hidden(variants: Mapping[str, Variant]) -> dict[str, Any]:
    return _finding(
        "kron-input-hidden",
        "A Kronecker input-hidden layer costs almost no accuracy: one-kron-mat and "
        f"two-kron-mat are within {ACCURACY_TOLERANCE_PP:g} pp of original.",
        f"each is at most {ACCURACY_TOLERANCE_PP:g} pp below original",
        [("one-kron-mat", "original"), ("two-kron-mat", "original")],
        variants,
        lambda c: c.diff >= -ACCURACY_TOLERANCE_PP,
    )


def _shared_factor(variants: Mapping[str, Variant]) -> dict[str, Any]:
    return _finding(
        "shared-factor",
        "Sharing the factor (U (x) U) costs no accuracy against two factors (U (x) V).",
        f"one-kron-mat is better, or the difference is within seed noise ({_NOISE} "
        "would count as a loss)",
        [("one-kron-mat", "two-kron-mat")],
        variants,
        lambda c: c.diff >= 0 or not c.beyond_noise,
    )


def _kron_hidden_output(variants: Mapping[str, Variant]) -> dict[str, Any]:
    return _finding(
        "kron-hidden-output",
        "A Kronecker hidden-output layer loses accuracy clearly.",
        f"each out-kron variant is below its counterpart with {_NOISE} and by more than "
        f"{MIN_CLEAR_LOSS_PP:g} pp",
        [("one-kron-mat-out-kron", "one-kron-mat"), ("two-kron-mat-out-kron", "two-kron-mat")],
        variants,
        lambda c: c.diff < -MIN_CLEAR_LOSS_PP and c.beyond_noise,
    )


def _dense_baselines(variants: Mapping[str, Variant]) -> dict[str, Any]:
    pairs = [(v["name"], str(v["matches"])) for v in variants.values() if v.get("matches")]
    finding = _finding(
        "dense-baseline",
        "A dense net with as many weights is worse than the Kronecker net it matches.",
        f"each dense baseline is below the variant it matches with {_NOISE}",
        pairs,
        variants,
        lambda c: c.diff < 0 and c.beyond_noise,
    )
    if not pairs:
        finding["evidence"] = (
            f"Not tested: no dense baseline (dense-h<N> matching a Kronecker variant) was run. "
            f"Criterion: {finding['criterion']}."
        )
    return finding


def findings(summary: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The four claims judged on ``summary["variants"]`` (see the module docstring).

    Each entry: ``{"id", "claim", "holds" (bool | None), "evidence", "criterion",
    "comparisons"}``; ``comparisons`` holds the numbers behind the evidence.
    """
    variants = {v["name"]: v for v in summary["variants"]}
    return [
        _kron_input_hidden(variants),
        _shared_factor(variants),
        _kron_hidden_output(variants),
        _dense_baselines(variants),
    ]
