"""Per-layer sensitivity from the single calibration pass, and its ground-truth check.

Scores (higher = more sensitive), all from :class:`~lsgq_compiler.qlinear.InputStats`:

- ``variance`` (LSGQuant, *reading*): variance across calibration samples of the
  per-channel mean input activation, averaged over channels.
- ``qerror``: the layer's own output error when only it is quantized at its planned bits,
  ``mean ||Q(X) Q(W)^T - X W^T||^2`` over the sampled calibration tokens.
- ``range``: mean over channels of the per-channel absmax divided by the per-token RMS
  (an outlier measure).

:func:`one_at_a_time` quantizes one layer at a time and measures the model-output MSE:
the ground truth each score is rank-correlated with (:func:`spearman`).
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler.calibration import run_batches
from lsgq_compiler.qlinear import InputStats, QuantLinear
from lsgq_compiler.quant import quantize_dequantize
from lsgq_compiler.quantizers import draq

from .infra import PassBase, PassContext, PassResult, quant_nodes


def score_variance(m: QuantLinear, st: InputStats) -> float:
    means = torch.stack(st.call_means)  # (calls, K)
    if means.shape[0] < 2:
        return float(st.var.mean())  # one sample: fall back to token variance
    return float(means.var(0, unbiased=False).mean())


def score_qerror(m: QuantLinear, st: InputStats) -> float:
    s = m.spec
    w = m.effective_weight().float()
    wq = quantize_dequantize(w, s.weight_bits, s.weight_symmetric, s.weight_granularity, s.group_size) \
        if s.weight_bits else w
    if not st.samples:
        return 0.0
    if len({x.shape for x in st.samples}) == 1:
        xs, amaxes = [torch.stack(st.samples)], [torch.stack(st.call_absmax)[:, None, :]]  # (calls, T, K)
    else:
        xs, amaxes = st.samples, st.call_absmax
    err = 0.0
    for x, amax in zip(xs, amaxes):
        x, amax = x.to(w.device), amax.to(w.device).float()
        if s.act_bits is None:
            xq = x
        elif s.act_quantizer.startswith("draq"):
            xq = draq(x, s.act_bits, amax)  # the call's true channel range, not the sample's
        else:
            xq = quantize_dequantize(x, s.act_bits, s.act_symmetric, s.act_granularity)
        err += float((F.linear(xq, wq) - F.linear(x, w)).pow(2).mean()) * x.shape[0]
    return err / len(st.samples)


def score_range(m: QuantLinear, st: InputStats) -> float:
    rms = st.var.add(st.mean**2).mean().sqrt().clamp_min(1e-12)
    return float((st.absmax / rms).mean())


SCORES: dict[str, Callable[[QuantLinear, InputStats], float]] = {
    "variance": score_variance, "qerror": score_qerror, "range": score_range}


class Sensitivity(PassBase):
    """Store ``spec.sensitivity`` (the chosen score) and all scores in ``spec.extra["scores"]``.

    Needs :class:`Observe` first. Full-precision layers get no score.
    """

    def __init__(self, ctx: PassContext, score: str = "qerror") -> None:
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown sensitivity score {score!r}; use one of {sorted(SCORES)}")
        self.ctx, self.score = ctx, score

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            if not m.spec.quantized:
                continue
            if m.calib_stats is None:
                raise RuntimeError("Sensitivity needs calibration statistics: run Observe first")
            scores = {k: fn(m, m.calib_stats) for k, fn in SCORES.items()}
            m.spec.extra["scores"] = {k: float(f"{v:.6g}") for k, v in scores.items()}
            m.spec.sensitivity = float(f"{scores[self.score]:.6g}")
        self.ctx.notes["sensitivity_score"] = self.score
        return PassResult(gm, False)


@torch.no_grad()
def one_at_a_time(gm: fx.GraphModule, batches: list[tuple[tuple, dict]], fp_outputs: list[torch.Tensor],
                  progress: bool = True) -> dict[str, float]:
    """Ground truth: model-output MSE with only one layer quantized, for each quantized layer.

    ``gm`` must have its quantizers attached (after InsertQuantizers).
    """
    mods = [m for _, m in quant_nodes(gm) if m.wq is not None or m.aq is not None]
    saved = {id(m): (m.wq, m.aq) for m in mods}
    for m in mods:
        m.wq = m.aq = None
        m._wcache = None
    out: dict[str, float] = {}
    try:
        for m in tqdm(mods, desc="one-layer-at-a-time", disable=not progress, leave=False):
            m.wq, m.aq = saved[id(m)]
            m._wcache = None
            ys = run_batches(gm, batches, progress=False)
            out[m.spec.module_path] = sum(float((y - r).pow(2).mean()) for y, r in zip(ys, fp_outputs)) / len(ys)
            m.wq = m.aq = None
            m._wcache = None
    finally:
        for m in mods:
            m.wq, m.aq = saved[id(m)]
            m._wcache = None
    return out


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    if len(a) != len(b) or len(a) < 2:
        raise ValueError("spearman needs two equally long sequences of at least 2 values")

    def ranks(v):
        t = torch.tensor(v, dtype=torch.float64)
        order = torch.argsort(t)
        r = torch.empty_like(t)
        r[order] = torch.arange(len(v), dtype=torch.float64)
        for val in torch.unique(t):  # average ties
            idx = (t == val).nonzero().flatten()
            if len(idx) > 1:
                r[idx] = r[idx].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / den) if den else 0.0
