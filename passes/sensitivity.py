"""Per-layer sensitivity from the single calibration pass, and its ground-truth check.

Scores (higher = more sensitive), all from :class:`~lsgq_compiler.qlinear.InputStats`:

- ``variance`` (LSGQuant, *reading*): variance across calibration samples of the
  per-channel mean input activation, averaged over channels.
- ``qerror``: the layer's own output error when only it is quantized at its planned bits,
  ``mean ||Q(X) Q(W)^T - X W^T||^2`` over the sampled calibration tokens.
- ``range``: mean over channels of the per-channel absmax divided by the per-token RMS
  (an outlier measure).
- ``output_error`` (the default of ``lsgquant``; needs ``Observe(grads=True)``): an unbiased
  estimate of the model-output error the ground truth measures, linearized:
  ``E_v[<J^T v, dY>^2] = ||J dY||^2`` with ``dY`` the layer's quantization error on a whole
  calibration call, ``J`` the Jacobian of the model output w.r.t. the layer's output and
  ``v ~ N(0, I)`` (Hutchinson); a few backward passes per calibration batch, in the same
  single calibration pass.
- ``fisher``: the diagonal of the same, ``sum g^2 dY^2`` (errors taken as independent).

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

from .infra import PassBase, PassContext, PassResult, quant_nodes


def score_variance(m: QuantLinear, st: InputStats) -> float:
    means = torch.stack(st.call_means)  # (calls, K)
    if means.shape[0] < 2:
        return float(st.var.mean())  # one sample: fall back to token variance
    return float(means.var(0, unbiased=False).mean())


def score_qerror(m: QuantLinear, st: InputStats) -> float:
    errs = [m.plain_quant_error(x, amax) for x, amax in zip(st.samples, st.call_absmax)]
    return sum(float(e.pow(2).mean()) for e in errs) / len(errs) if errs else 0.0


def score_output_error(m: QuantLinear, st: InputStats) -> float:
    return st.probe_sums["output_error"] / max(st.probe_count, 1)


def score_fisher(m: QuantLinear, st: InputStats) -> float:
    return st.probe_sums["fisher"] / max(st.probe_count, 1)


def score_range(m: QuantLinear, st: InputStats) -> float:
    rms = st.var.add(st.mean**2).mean().sqrt().clamp_min(1e-12)
    return float((st.absmax / rms).mean())


SCORES: dict[str, Callable[[QuantLinear, InputStats], float]] = {
    "variance": score_variance, "qerror": score_qerror, "range": score_range, "output_error": score_output_error,
    "fisher": score_fisher}
GRADIENT_SCORES = ("output_error", "fisher")  # need Observe(grads=True)


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
            st = m.calib_stats
            scores = {k: fn(m, st) for k, fn in SCORES.items() if k not in GRADIENT_SCORES or st.probe_count}
            if self.score not in scores:
                raise RuntimeError(f"the {self.score!r} sensitivity score needs output gradients: run "
                                   "Observe(ctx, grads=True) first (recipe option observe_grads=True)")
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
