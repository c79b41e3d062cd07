"""What ``kronify`` did: one :class:`LayerReport` per matched module, a :class:`KronifyReport`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torchkron.surgery._modules import numel
from torchkron.surgery.selection import Entry

__all__ = ["KronifyReport", "LayerReport", "kronify_report", "layer_report"]


@dataclass(frozen=True)
class LayerReport:
    """What ``kronify`` did to one matched module.

    ``weights_*`` count the layer's weights (biases excluded); ``aliases`` are the other
    names of a module used at several places.
    """

    name: str
    in_features: int
    out_features: int
    replaced: bool
    weights_before: int
    weights_after: int
    shapes: tuple[tuple[int, int], ...] = ()
    rank: int = 1
    tied: bool = False
    approximation_error: float | None = None
    reason: str = ""
    kind: str = ""
    aliases: tuple[str, ...] = ()
    note: str = ""


@dataclass
class KronifyReport:
    """The modules ``kronify`` matched, replaced or skipped (with the reason).

    Attributes:
        layers: one row per matched module (a shared module once).
        params_before: ``sum(p.numel() for p in model.parameters())`` before (shared
            parameters counted once).
        params_after: the same after the conversion.
        budget: how ranks were chosen (``max_error=...``, ``target_params=...``) or ``""``.
    """

    layers: list[LayerReport] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    budget: str = ""

    @property
    def replaced(self) -> list[LayerReport]:
        return [r for r in self.layers if r.replaced]

    @property
    def skipped(self) -> list[LayerReport]:
        return [r for r in self.layers if not r.replaced]

    @property
    def weights_before(self) -> int:
        """Weights of the matched layers before (biases excluded)."""
        return sum(r.weights_before for r in self.layers)

    @property
    def weights_after(self) -> int:
        return sum(r.weights_after for r in self.layers)

    def __str__(self) -> str:
        head = ("module", "type", "in->out", "factors", "rank", "weights", "error")
        rows: list[tuple[str, ...]] = [head]
        notes = ["note"]
        for r in self.layers:
            factors = " (x) ".join(f"{o}x{n}" for o, n in r.shapes) or "-"
            if r.tied:
                factors += " tied"
            err = "-" if r.approximation_error is None else f"{r.approximation_error:.4f}"
            name = r.name + (f" (= {', '.join(r.aliases)})" if r.aliases else "")
            rows.append(
                (
                    name,
                    r.kind or "-",
                    f"{r.in_features}->{r.out_features}",
                    factors,
                    str(r.rank) if r.replaced else "-",
                    f"{r.weights_before:,} -> {r.weights_after:,}",
                    err,
                )
            )
            note = "replaced" if r.replaced else f"skipped: {r.reason}"
            notes.append(note + (f" ({r.note})" if r.note else ""))
        widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
        # The note column is last and never padded: one long reason must not widen every row.
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + "  " + note
            for row, note in zip(rows, notes, strict=True)
        ]
        before, after = self.params_before, self.params_after
        ratio = f" ({before / after:.2f}x fewer)" if after and after < before else ""
        lines.append(f"model parameters: {before:,} -> {after:,}{ratio}")
        wb, wa = self.weights_before, self.weights_after
        lines.append(
            f"weights in matched layers: {wb:,} -> {wa:,}; "
            f"{len(self.replaced)} replaced, {len(self.skipped)} skipped"
        )
        if self.budget:
            lines.append(f"ranks chosen by {self.budget}")
        return "\n".join(lines)


def layer_report(e: Entry, matched: set[str]) -> LayerReport:
    # Weights other than biases, less those of matched submodules (their own rows).
    inner = {n[len(e.name) + 1 :] + "." for n in matched if n.startswith(e.name + ".")}
    before = sum(
        numel(p)
        for n, p in e.module.named_parameters()
        if not n.endswith("bias") and not any(n.startswith(i) for i in inner)
    )
    in_f = out_f = 0
    if e.view is not None:
        out_f, in_f = (int(d) for d in e.view.weight.shape)
    else:
        in_f = int(getattr(e.module, "in_features", 0) or 0)
        out_f = int(getattr(e.module, "out_features", 0) or 0)
    aliases = tuple(e.names[1:])
    if e.new is None:
        return LayerReport(
            e.name,
            in_f,
            out_f,
            False,
            before,
            before,
            shapes=e.shapes,
            rank=e.rank,
            reason=e.reason,
            kind=e.kind,
            aliases=aliases,
        )
    new = e.new
    return LayerReport(
        e.name,
        in_f,
        out_f,
        True,
        before,
        new.num_weights(),
        shapes=new.shapes,
        rank=new.rank,
        tied=new.tied,
        approximation_error=new.approximation_error,
        kind=e.kind,
        aliases=aliases,
        note=e.note,
    )


def kronify_report(
    entries: list[Entry], params_before: int, params_after: int, budget: str
) -> KronifyReport:
    """The report of every matched module (a shared module once)."""
    report = KronifyReport(params_before=params_before, budget=budget)
    matched = {n for e in entries for n in e.names}
    for e in entries:
        report.layers.append(layer_report(e, matched))
    report.params_after = params_after
    return report
