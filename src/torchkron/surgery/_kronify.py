"""``kronify``: the outline of a conversion, each step a function of its own module.

Check the arguments, select the layers and settle their shapes and ranks
(:mod:`~torchkron.surgery.selection`), choose ranks by a budget
(:mod:`~torchkron.surgery.ranks`), build every new layer and swap them in
(:mod:`~torchkron.surgery.build`), report (:mod:`~torchkron.surgery.report`) and keep an
HF config's plan in sync (:mod:`~torchkron.surgery.plan`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

from torch import nn

from torchkron.surgery._modules import count_params
from torchkron.surgery.build import build_layers, refuse_meta, swap
from torchkron.surgery.calibration import check_calibration, collect_moments
from torchkron.surgery.converters import KRONIFY_MAPPING, ConverterTable, lookup
from torchkron.surgery.plan import output_embeddings, sync_config
from torchkron.surgery.ranks import check_budget, choose_ranks
from torchkron.surgery.report import KronifyReport, kronify_report
from torchkron.surgery.selection import ShapesSpec, check_shared, check_spec, select_layers

__all__ = ["kronify"]


def kronify(
    model: nn.Module,
    *,
    target: str | Sequence[str] | None = None,
    exclude: str | Sequence[str] | None = None,
    shapes: ShapesSpec = None,
    num_factors: int | Mapping[str, int] = 2,
    rank: int | Mapping[str, int] = 1,
    tied: bool = False,
    from_dense: bool = True,
    mapping: ConverterTable | None = None,
    subclasses: bool = True,
    shared: Literal["skip", "reuse"] = "skip",
    max_error: float | None = None,
    target_params: int | None = None,
    compression: float | None = None,
    max_rank: int | None = None,
    calibration: Iterable[Any] | None = None,
    include_output_embeddings: bool = False,
) -> tuple[nn.Module, KronifyReport]:
    """Replace the dense layers of ``model`` with ``KronLinear``, in place.

    Matched modules are ``nn.Linear`` and its subclasses (``nn.MultiheadAttention``'s
    ``out_proj`` included), HF ``Conv1D`` (GPT-2) and any type added with
    :func:`register_converter`. Every matched module is in the report: replaced, or
    skipped with the reason (size that does not factor, a weight tied to another
    module, a module used at several places, a ``LazyLinear`` not yet initialised,
    ``MultiheadAttention``'s packed ``in_proj_weight``...). Either every planned layer
    is replaced or, on an error, the model is left unchanged.

    Args:
        model: the model to modify; it is changed in place and returned.
        target: which modules to consider, by qualified name: a regex matched against the
            whole name, or a list of names/suffixes (``["fc1", "mlp.proj"]``). Default:
            every module of a registered type.
        exclude: names to leave alone, in the same forms as ``target``.
        shapes: factor shapes: one list for every layer, a ``{pattern: shapes}`` dict, or
            a function ``(name, module) -> shapes | None``. ``None``: balanced shapes
            from :func:`torchkron.factor_shapes` with ``num_factors``. Explicit shapes
            that do not fit a layer raise.
        num_factors: number of factors when shapes are not given; an int or a
            ``{pattern: int}`` dict (layers matching no pattern: 2).
        rank: number of summed Kronecker products; an int or a ``{pattern: int}`` dict
            like PEFT's ``rank_pattern`` (first match wins; ``".*"`` as the last key sets
            the default, else 1). A pattern is a regex for the full name or a dotted
            suffix (``"query"`` matches ``"...attention.self.query"``); one that matches
            no targeted layer raises.
        tied: one shared factor per layer (fresh init: a dense weight has no tied
            nearest form, so ``from_dense`` does not apply).
        from_dense: initialise from the dense weights by
            :func:`torchkron.nearest_kronecker` (``True``) or afresh (``False``, the one
            that works on a ``meta``-device model).
        mapping: the converter registry to use instead of :data:`KRONIFY_MAPPING`.
        subclasses: match subclasses of registered types (``True``); ``False`` matches
            exact types only and reports the subclasses it leaves out.
        shared: a module used at several places: ``"skip"`` it (reported) or
            ``"reuse"``: convert it once and put the one ``KronLinear`` at every place.
            Parameters tied between different modules (GPT-2's ``lm_head`` and ``wte``)
            are always skipped and the tie is kept.
        max_error: choose each layer's rank as the smallest whose relative Frobenius
            error is at most this (two factors only).
        target_params: choose ranks so that the whole model has at most this many
            parameters, greedily adding the rank step with the largest reduction of
            squared relative error per added parameter (two factors only).
        compression: like ``target_params = params_before / compression``.
        max_rank: the largest rank ``max_error``/``target_params`` may choose.
        calibration: batches of model inputs (``model(batch)``; a tuple is unpacked, a
            dict passed as keywords), run once in eval mode before converting. Given,
            each layer's factors minimise its output error on these inputs
            (``nearest_kronecker(..., input_second_moment=C)`` with ``C = E[x x^T]`` of
            its inputs, K-FAC approximated, damped) instead of the weight error, and
            ``max_error``/``target_params``/``compression`` measure output errors; the
            report's error column is then the relative output error. Needs
            ``from_dense=True``, ``tied=False``.
        include_output_embeddings: also convert the model's ``get_output_embeddings()``
            (an HF LM head). Default ``False``: it stays dense, reported with the reason,
            as PEFT's ``"all-linear"`` leaves it, since ``resize_token_embeddings`` needs
            a dense head; once converted, ``resize_token_embeddings`` raises before
            changing anything (:func:`merge` first to resize).

    A bare layer of a converted type as ``model`` (``kronify(nn.Linear(784, 625))``)
    cannot be changed in place: it is converted as ``nn.Sequential(layer)`` would be
    (reported under the name ``"0"``) and the new ``KronLinear`` is returned, as
    :func:`merge` returns the dense layer of a bare ``KronLinear``.

    Returns:
        ``(model, report)``; ``print(report)`` gives one row per matched module with its
        shapes, chosen rank, weights before/after and error, and the model's real
        parameter counts before and after.

    Raises:
        ValueError: a bad argument (a rank of 0, a ``target``/``exclude``/per-layer
            pattern that matches no layer, shapes
            that do not fit a targeted layer, dense initialisation of meta tensors, an
            unreachable ``target_params``); the model is unchanged.

    Examples:
        >>> net = nn.Sequential(nn.Linear(784, 625), nn.ReLU(), nn.Linear(625, 10))
        >>> net, report = kronify(net, target=["0"])
        >>> type(net[0]).__name__, report.weights_after
        ('KronLinear', 1400)
        >>> report.params_after == sum(p.numel() for p in net.parameters())
        True
    """
    table = KRONIFY_MAPPING if mapping is None else mapping
    if lookup(model, table, subclasses)[1]:
        # A bare layer: convert it inside a container and hand back the new layer.
        holder, report = kronify(
            nn.Sequential(model),
            target=target,
            exclude=exclude,
            shapes=shapes,
            num_factors=num_factors,
            rank=rank,
            tied=tied,
            from_dense=from_dense,
            mapping=mapping,
            subclasses=subclasses,
            shared=shared,
            max_error=max_error,
            target_params=target_params,
            compression=compression,
            max_rank=max_rank,
        )
        return next(iter(holder.children())), report
    check_spec("rank", rank)
    check_spec("num_factors", num_factors)
    check_shared(shared)
    check_calibration(calibration, tied=tied, from_dense=from_dense)
    budgets = check_budget(
        rank,
        tied=tied,
        from_dense=from_dense,
        max_error=max_error,
        target_params=target_params,
        compression=compression,
        max_rank=max_rank,
    )

    params_before = count_params(model)
    entries = select_layers(
        model,
        table,
        target=target,
        exclude=exclude,
        subclasses=subclasses,
        shared=shared,
        shapes=shapes,
        num_factors=num_factors,
        rank=rank,
        tied=tied,
        budgets=budgets,
        head=None if include_output_embeddings else output_embeddings(model),
    )
    planned = [e for e in entries if not e.reason]
    refuse_meta(planned, from_dense=from_dense, budgets=budgets)
    moments = None if calibration is None else collect_moments(model, planned, calibration)

    budget = ""
    if budgets:
        budget = choose_ranks(
            planned,
            entries,
            params_before,
            max_error,
            target_params,
            compression,
            max_rank,
            moments=moments,
        )
        planned = [e for e in entries if not e.reason]

    build_layers(planned, tied=tied, from_dense=from_dense, moments=moments)
    swap(model, [(n, e.new) for e in planned for n in e.names if e.new is not None])
    report = kronify_report(entries, params_before, count_params(model), budget)
    sync_config(model)
    return model, report
