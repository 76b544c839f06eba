"""Recipes: each an ordered list of shared passes with the paper's defaults.

``RECIPES[name].build(ctx)`` returns the passes; ``lsgq recipes`` lists them. The peer methods
register from :mod:`.recipe_zoo`; both fill :data:`.registry.RECIPES`.
"""
from __future__ import annotations

from .registry import RECIPES, Recipe, register_recipe

__all__ = ["RECIPES", "Recipe", "register_recipe"]


@register_recipe("minmax", "round-to-nearest: per-channel weights, per-token dynamic activations",
                 "baseline (RTN / MinMax)")
def _minmax(ctx):
    """Round-to-nearest baseline. Weights: static asymmetric min/max per output channel.
    Activations: dynamic asymmetric min/max per token, recomputed every call."""
    from lsgq_compiler.passes.annotate_linears import AnnotateLinears
    from lsgq_compiler.passes.insert_quantizers import InsertQuantizers
    from lsgq_compiler.passes.swap_linears import SwapLinears

    return [AnnotateLinears(ctx, weight_granularity="row", weight_symmetric=False,
                            act_granularity="token", act_symmetric=False, act_quantizer="dynamic"),
            SwapLinears(), InsertQuantizers()]


@register_recipe("lsgquant", "DRAQ activations, sensitivity bits, Hadamard + low-rank QAO with VOLTS tiers",
                 "LSGQuant (ICML 2026, arXiv 2602.03182)")
def _lsgquant(ctx):
    """LSGQuant. Each quantized linear becomes ``DRAQ(X H) Q(H^T W_R) + (X L1) L2 + b``:
    DRAQ activations (online per-channel range, per-token 'symmetric' quantization),
    static asymmetric per-channel weights, a block Hadamard rotation, a full-precision
    low-rank branch from the SVD whose parameter share matches the paper's (~2%), bits per
    layer from the calibrated sensitivity, and QAO training tiered by VOLTS (frozen /
    30 iterations / to convergence). Faithful readings where the paper is silent: the
    sensitivity default is ``output_error``, a Hutchinson estimate of the model-output error
    the layer's quantization causes, from a few backward passes per calibration batch (see
    passes/sensitivity.py; the paper's variance statistic is ``sensitivity="variance"``, the
    layer-local error ``"qerror"``; at billions of parameters, where a backward pass at 18k
    tokens does not fit in memory, use ``"qerror"``), training distils each
    layer to its full-precision output. Ablation switches in ``config.options``:
    ``draq``, ``uniform_bits``, ``volts`` (tiered/all_full/all_frozen), ``lowrank_share``
    (0 disables), ``rotate``, ``sensitivity``, ``light_iters``, ``full_iters``, ``qao_iters``
    (QAO iterations for all layers together, most sensitive first; default: no total), ``lr``,
    ``draq_static``."""
    from lsgq_compiler.passes.annotate_linears import AnnotateLinears
    from lsgq_compiler.passes.bit_allocation import BitAllocation
    from lsgq_compiler.passes.draq import DRAQ
    from lsgq_compiler.passes.insert_quantizers import InsertQuantizers
    from lsgq_compiler.passes.lowrank import AssignRanks, LowRank
    from lsgq_compiler.passes.observe import Observe
    from lsgq_compiler.passes.qao import QAO
    from lsgq_compiler.passes.rotate import Rotate
    from lsgq_compiler.passes.sensitivity import Sensitivity
    from lsgq_compiler.passes.swap_linears import SwapLinears
    from lsgq_compiler.passes.volts import VOLTS

    opt = ctx.option
    share = opt("lowrank_share", 0.02)
    act = dict(act_quantizer="draq", act_symmetric=True) if opt("draq", True) else \
        dict(act_quantizer="dynamic", act_symmetric=False)
    passes = [AnnotateLinears(ctx, weight_granularity="row", weight_symmetric=False, act_granularity="token",
                              rotate=bool(opt("rotate", True)), **act),
              SwapLinears()]
    if opt("draq", True):
        passes.append(DRAQ(static=bool(opt("draq_static", False))))
    score = opt("sensitivity", "output_error")
    grads = score in ("output_error", "fisher") or bool(opt("observe_grads", False))
    passes += [Observe(ctx, grads=grads, probes=int(opt("probes", 4))), Sensitivity(ctx, score)]
    if ctx.plan is None:
        passes.append(BitAllocation(ctx, uniform=bool(opt("uniform_bits", False))))
        if share > 0:
            passes.append(AssignRanks(share=share))
    passes += [LowRank(), Rotate(ctx), InsertQuantizers(),
               VOLTS(ctx, light_iters=opt("light_iters", 30), full_iters=opt("full_iters", 100),
                     mode=opt("volts", "tiered")),
               QAO(ctx, lr=opt("lr", 5e-3), total_iters=opt("qao_iters", None))]
    return passes
