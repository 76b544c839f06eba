"""The seed and peer methods as recipes: short lists of the shared passes.

Each recipe's docstring is its documentation (what it does, which details are *readings*
where the paper is silent, the citation); ``lsgq recipes`` lists them. Options go in
``QuantConfig.options``; training budgets default small enough to compile the shipped
~12 M-parameter model on 2 CPU cores in a few minutes, and every training stage stops at
``config.time_budget_s``.
"""
from __future__ import annotations

from lsgq_compiler.passes.annotate_linears import AnnotateLinears
from lsgq_compiler.passes.bit_allocation import BitAllocation
from lsgq_compiler.passes.group_size import GroupSize
from lsgq_compiler.passes.hsvd import HSVD
from lsgq_compiler.passes.insert_quantizers import InsertQuantizers
from lsgq_compiler.passes.lba import LBA
from lsgq_compiler.passes.lbq import LearnableQuantizers
from lsgq_compiler.passes.lowrank import AssignRanks, LowRank
from lsgq_compiler.passes.mixed_precision import MetricDecoupledSensitivity
from lsgq_compiler.passes.observe import Observe
from lsgq_compiler.passes.qvd import HTDQ, SCRI
from lsgq_compiler.passes.rotate import Rotate
from lsgq_compiler.passes.rpq import RPQ
from lsgq_compiler.passes.smooth import Smooth
from lsgq_compiler.passes.stca import STCA
from lsgq_compiler.passes.swap_linears import SwapLinears
from lsgq_compiler.passes.train_params import TrainParams
from lsgq_compiler.passes.vasmp import VaSMP

from .registry import register_recipe

#: rank 32 at width 3072 (SVDQuant, LSGQuant): the share of a square layer's parameters
#: held by the low-rank factors, ``32 * (3072 + 3072) / 3072^2`` = 2.08%.
RANK32_SHARE = 2 * 32 / 3072


def _annotate(ctx, **kw):
    base = dict(weight_granularity="row", weight_symmetric=False, act_granularity="token", act_symmetric=False,
                act_quantizer="dynamic")
    return AnnotateLinears(ctx, **{**base, **kw})


def _nearby_bits(ctx, spread: int = 1) -> tuple[int, ...]:
    b = ctx.config.weight_bits
    return tuple(x for x in range(b - spread, b + spread + 1) if 2 <= x <= 8)


@register_recipe("smoothquant", "per-channel smoothing (alpha 0.5) moved into the weights, then RTN W/A",
                 "SmoothQuant (Xiao et al., ICML 2023, arXiv 2211.10438)")
def _smoothquant(ctx):
    """SmoothQuant. ``Y = (X diag(s)^-1)(diag(s) W^T)`` with ``s_j = max|X_j|^a / max|W_j|^(1-a)``,
    ``a = 0.5``, from the calibrated per-channel input ranges; then symmetric per-output-channel
    weights and symmetric per-token dynamic activations (the paper's W8A8 setting, run at every
    width). The scale divides the layer input here (exact in full precision); lowering folds it
    into the producer (norm or previous linear). Options: ``alpha``."""
    return [_annotate(ctx, weight_symmetric=True, act_symmetric=True, smooth_alpha=ctx.option("alpha", 0.5)),
            SwapLinears(), Observe(ctx), Smooth(), InsertQuantizers()]


@register_recipe("quarot", "block Hadamard rotation of every quantized linear's input, then RTN W/A",
                 "QuaRot (Ashkboos et al., NeurIPS 2024, arXiv 2404.00456)")
def _quarot(ctx):
    """QuaRot (RTN variant). ``Y = (X R)(W R)^T`` with ``R = diag(random signs) blockdiag(H_b)``,
    ``b`` the largest power of two dividing the width (a block-diagonal Hadamard for widths
    like 1536 = 512 x 3; never skipped), exact in full precision. Symmetric per-output-channel
    weights, symmetric per-token dynamic activations, no calibration data needed. Faithful
    reading: the rotation is applied online at every linear's input (QuaRot fuses the ones it
    can into the previous layer; the arithmetic is the same); the GPTQ weight variant and
    clipping-ratio searches are not part of this baseline."""
    return [_annotate(ctx, weight_symmetric=True, act_symmetric=True, rotate=True),
            SwapLinears(), Rotate(ctx), InsertQuantizers()]


@register_recipe("svdquant", "smoothing + full-precision low-rank branch (rank-32 share) + group-64 quantized residual",
                 "SVDQuant (Li et al., ICLR 2025, arXiv 2411.05007)")
def _svdquant(ctx):
    """SVDQuant. Smooth (``a = 0.5``), then split ``W_s = L_up L_down + W_R`` by truncated SVD
    and quantize only the residual ``W_R``; the low-rank branch stays in full precision. The
    rank keeps the paper's parameter share, rank 32 at width 3072 = 2.08% of a square layer
    (rank 4 at width 384, 1 at toy widths); ``options["rank"]`` sets an absolute rank instead,
    ``options["lowrank_share"]`` another share. Weights and activations are quantized
    symmetrically in groups of 64 along the input dimension (the INT4 kernels' format), each
    layer using the largest divisor of its width that is at most 64. Faithful readings: the
    smoothing strength is fixed at 0.5 (the paper searches it per layer); the W8 and W6
    settings use the same format at that width."""
    passes = [_annotate(ctx, weight_symmetric=True, act_symmetric=True, smooth_alpha=ctx.option("alpha", 0.5)),
              SwapLinears(), Observe(ctx), Smooth()]
    if ctx.plan is None:
        rank = ctx.option("rank", None)
        passes.append(AssignRanks(rank=rank, share=ctx.option("lowrank_share", RANK32_SHARE)))
    return passes + [LowRank(), InsertQuantizers(), GroupSize(ctx.option("group_size", 64), acts=True)]


@register_recipe("viditq", "static smoothing + online rotation, per-token acts, metric-decoupled mixed precision",
                 "ViDiT-Q (Zhao et al., ICLR 2025, arXiv 2406.02540)")
def _viditq(ctx):
    """ViDiT-Q. Dynamic per-token activation quantization; static-dynamic channel balancing:
    a static per-channel scale from calibration (SmoothQuant form, ``a = 0.5``) followed by an
    online block Hadamard rotation for the variation the static scale cannot follow; weights
    per output channel. Metric-decoupled mixed precision: each layer is quantized alone and
    its effect on each output metric (fidelity, temporal flicker, spatial detail) is measured
    separately; each metric's scores become shares of its total, a layer's sensitivity is its
    largest share, and the shared bit allocation picks widths in ``{b-1, b, b+1}`` (W8:
    {7, 8}, so all layers stay at 8 and the measurement is skipped) with the average weight
    bits within ``b``. Readings: the metrics are VSR counterparts of the paper's T2V metrics
    (see ``passes/mixed_precision.py``); asymmetric quantizers. The measurement costs one
    forward per quantized layer and batch (60 on the shipped model); with
    ``config.time_budget_s`` the layers not reached get the median score. Options: ``alpha``,
    ``mixed_precision`` (False: uniform), ``metric_batches``."""
    passes = [_annotate(ctx, smooth_alpha=ctx.option("alpha", 0.5), rotate=True),
              SwapLinears(), Observe(ctx), Smooth(), Rotate(ctx), InsertQuantizers()]
    allowed = _nearby_bits(ctx)
    if ctx.plan is None and ctx.option("mixed_precision", True) and max(allowed) > ctx.config.weight_bits:
        passes += [MetricDecoupledSensitivity(ctx, batches=ctx.option("metric_batches", 1)),
                   BitAllocation(ctx, allowed=allowed), InsertQuantizers()]
    return passes


@register_recipe("quantvsr", "STCA ranks for a Hadamard + low-rank dual branch, branch refinement, then LBA",
                 "QuantVSR (Chai et al., AAAI 2026; github.com/bowenchai/QuantVSR)")
def _quantvsr(ctx):
    """QuantVSR. Each layer becomes ``F(x, L1 L2) + F(Qa(x H), Qw(R H)) + b + lba`` with ``L1 L2``
    from the SVD of ``W`` and ``R = W - L1 L2``, ``H`` a random (block) Hadamard; activations
    dynamic per-tensor asymmetric, weights per-channel asymmetric. STCA sets each layer's rank
    from the spatial and temporal complexity of its input tokens on the calibration clips (16
    +- 1 per clip by global 25th/75th percentiles, clipped to [16, 64], multiple of 8; see
    ``passes/stca.py``). Then the dual-branch refinement trains only ``L1, L2`` and LBA trains
    only the per-output-channel bias alignment. Readings for the CPU budget: both stages
    distil each layer to its full-precision output on 512 calibration tokens
    (``options["train_mode"] = "end_to_end"`` trains against the model output, as the released
    code does) with 30 and 15 iterations (the paper: 900 each, AdamW lr 1e-3); ranks are
    capped at half the layer width. Options: ``lowrank_iters``, ``lba_iters``, ``lr``,
    ``rank_step``, ``train_mode``, ``train_tokens``."""
    mode, lr, tok = ctx.option("train_mode", "layer"), ctx.option("lr", 5e-3), ctx.option("train_tokens", 512)
    passes = [_annotate(ctx, act_granularity="tensor", rotate=True), SwapLinears(), Observe(ctx)]
    if ctx.plan is None:
        passes.append(STCA(ctx, step=ctx.option("rank_step", 1)))
    return passes + [LowRank(), Rotate(ctx), InsertQuantizers(),
                     TrainParams(ctx, "lowrank", ctx.option("lowrank_iters", 30), lr, mode=mode, max_tokens=tok),
                     LBA(), TrainParams(ctx, "lba", ctx.option("lba_iters", 15), lr, mode=mode, max_tokens=tok)]


@register_recipe("qdit4sr", "H-SVD (global low-rank + block rank-1, matched budget) + VaSMP weight bits",
                 "Q-DiT4SR (ICML 2026; github.com/xunzhang1128/Q-DiT4SR)")
def _qdit4sr(ctx):
    """Q-DiT4SR. H-SVD: rotate (block Hadamard), take a global truncated SVD in full precision,
    then keep a full-precision rank-1 term per square tile of the residual; quantize what is
    left. The matched budget is the parameter share of a rank-32 branch at width 3072 (2.08%),
    half to the global rank and half to the tiles (*reading*; see ``passes/hsvd.py``). VaSMP:
    data-free weight bits in ``{b-1, b, b+1}`` from the variance of each layer's quantized
    weight, ``b_l = b + 0.5 log2(var_l / geomean(var))`` then greedy rounding to the average
    ``b`` (*reading*). VaTMP schedules activation bits over timesteps; one step is a single
    segment, so activations use the configured width (dynamic per-token, asymmetric). No
    training. Options: ``lowrank_share``, ``block_fraction``, ``block``, ``mixed_precision``."""
    share, frac = ctx.option("lowrank_share", RANK32_SHARE), ctx.option("block_fraction", 0.5)
    passes = [_annotate(ctx, rotate=True), SwapLinears()]
    if ctx.plan is None:
        passes.append(AssignRanks(share=share * (1 - frac)))
    passes += [LowRank(), Rotate(ctx), HSVD(share=share, block_fraction=frac, block=ctx.option("block", None))]
    if ctx.plan is None and ctx.option("mixed_precision", True):
        passes.append(VaSMP(ctx))
    return passes + [InsertQuantizers()]


@register_recipe("passionsr", "learnable boundary quantizers + learnable equivalent transformation, staged (DQC)",
                 "PassionSR (Zhu et al., CVPR 2025; github.com/libozhu03/PassionSR)")
def _passionsr(ctx):
    """PassionSR. LBQ: asymmetric quantizers with learnable clipping bounds, per output channel
    for weights and static per tensor for activations (initialised at the calibrated range).
    LET: a learnable per-channel scale and shift between activation and weight, initialised
    from SmoothQuant (``a = 0.5``) and zero shift, the shift's effect folded into the bias.
    DQC: calibration in stages for stability, first the LET parameters, then the quantizer
    bounds (as the released code does). Readings for the CPU budget: each stage distils each
    layer to its full-precision output on 512 calibration tokens
    (``options["train_mode"] = "end_to_end"`` uses the model output), 20 iterations per layer
    per stage. Options: ``let_iters``, ``bound_iters``, ``lr``, ``act`` (``static`` /
    ``dynamic``: per-token ranges with learnable clipping), ``train_mode``, ``train_tokens``,
    ``alpha``."""
    mode, lr, tok = ctx.option("train_mode", "layer"), ctx.option("lr", 5e-3), ctx.option("train_tokens", 512)
    return [_annotate(ctx, act_granularity="tensor", act_quantizer="static", smooth_alpha=ctx.option("alpha", 0.5)),
            SwapLinears(), Observe(ctx), Smooth(),
            LearnableQuantizers(ctx, act_mode=ctx.option("act", "static"), let=True),
            TrainParams(ctx, "let", ctx.option("let_iters", 20), lr, mode=mode, stage="dqc:let", max_tokens=tok),
            TrainParams(ctx, "bounds", ctx.option("bound_iters", 20), lr, mode=mode, stage="dqc:bounds",
                        max_tokens=tok)]


@register_recipe("qartsr", "learnable quantizers calibrated module by module from the output back, then end-to-end",
                 "QArtSR (Zhu et al., 2025; github.com/libozhu03/QArtSR)")
def _qartsr(ctx):
    """QArtSR. RPQ: the transformer blocks are calibrated one at a time from the last to the
    first, each with a module loss (its layers against their full-precision outputs) and an
    image loss (model output, later blocks already quantized, earlier ones in full
    precision); then an extended end-to-end stage over all blocks. Only quantization
    parameters are updated: the learnable bounds of asymmetric quantizers (per output channel
    for weights, static per tensor for activations, as in PassionSR by the same authors; a
    *reading*). TRQ, retraining for the timestep used, is inherent here: calibration runs at
    the one-step model's fixed timestep. Budgets for the CPU: 10 layer iterations (512
    calibration tokens) and 1 image iteration per block, 2 end-to-end iterations. Options:
    ``module_iters``, ``image_iters``, ``e2e_iters``, ``lr``, ``act`` (``static`` /
    ``dynamic``), ``train_tokens``."""
    lr = ctx.option("lr", 1e-2)
    return [_annotate(ctx, act_granularity="tensor", act_quantizer="static"), SwapLinears(), Observe(ctx),
            LearnableQuantizers(ctx, act_mode=ctx.option("act", "static")),
            RPQ(ctx, module_iters=ctx.option("module_iters", 10), image_iters=ctx.option("image_iters", 1), lr=lr,
                max_tokens=ctx.option("train_tokens", 512)),
            TrainParams(ctx, "bounds", ctx.option("e2e_iters", 2), lr, mode="end_to_end", stage="extended_e2e")]


@register_recipe("qvd", "SCRI channel-range integration + HTDQ quantizers for skewed features",
                 "QVD (Tian et al., arXiv 2407.11585)")
def _qvd(ctx):
    """QVD. SCRI: per-channel scales pull each layer's scattered input-channel ranges towards
    their geometric mean (``s_j = (r_j / G)^beta``, moved into the weight), ``beta`` chosen per
    layer from {0, .25, .5, .75, 1} by the quantized layer-output error. HTDQ: time-embedding
    layers, if quantized, get static per-channel asymmetric activation ranges; layers whose
    token features are strongly skewed (e.g. after GELU) get an asymmetric per-token quantizer
    with the long tail clipped at a searched fraction of the range, so the dense body keeps
    more levels. Both are designs from the paper's description (*readings*; see
    ``passes/qvd.py``). Weights per output channel, activations dynamic per token, both
    asymmetric. Options: ``skew_threshold``."""
    return [_annotate(ctx), SwapLinears(), Observe(ctx), SCRI(ctx), InsertQuantizers(),
            HTDQ(ctx, skew_threshold=ctx.option("skew_threshold", 1.0))]
