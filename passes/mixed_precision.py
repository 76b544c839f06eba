"""ViDiT-Q's metric-decoupled sensitivity: one sensitivity per quality metric, decoupled.

ViDiT-Q observes that quantizing different layers hurts different aspects of a video
(content, temporal consistency, ...), so a single error number mixes them and the
allocation favours whichever dominates. Here each quantized layer is quantized alone (the
others in full precision) on ``batches`` calibration batches, and its output error is
measured by each metric separately; each metric's scores are normalised to shares of that
metric's total over layers, and a layer's sensitivity is its largest share (it is sensitive
if it matters for *any* metric). The shared :class:`~.bit_allocation.BitAllocation` then
turns sensitivities into bits. Metrics for video SR outputs ``(B, C, T, H, W)``:

- ``fidelity``: mean squared error of the output;
- ``temporal``: mean squared error of frame differences ``Y[:, :, t+1] - Y[:, :, t]``
  (flicker); skipped for outputs without a time axis;
- ``detail``: mean squared error of spatial differences along H and W (texture, edges).

*Reading*: ViDiT-Q's metrics are for text-to-video (CLIP score, FVD, flicker); these are
their counterparts for a super-resolution output without learned metrics.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler.calibration import run_batches

from .infra import PassBase, PassContext, PassResult, quant_nodes
from .train_params import cap_expired, note_time_cap, train_deadline


def _temporal(y: torch.Tensor, r: torch.Tensor) -> float | None:
    if y.dim() != 5 or y.shape[2] < 2:
        return None
    d = (y - r).double()
    return float((d[:, :, 1:] - d[:, :, :-1]).pow(2).mean())


def _detail(y: torch.Tensor, r: torch.Tensor) -> float | None:
    if y.dim() < 4:
        return None
    d = (y - r).double()
    return float((d[..., 1:, :] - d[..., :-1, :]).pow(2).mean() + (d[..., 1:] - d[..., :-1]).pow(2).mean())


METRICS: dict[str, Callable[[torch.Tensor, torch.Tensor], float | None]] = {
    "fidelity": lambda y, r: float((y - r).double().pow(2).mean()),
    "temporal": _temporal,
    "detail": _detail,
}


def decouple(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """``scores[metric][layer]`` -> sensitivity per layer: max over metrics of the layer's share."""
    layers = next(iter(scores.values())).keys()
    shares = {met: {k: v / (sum(s.values()) or 1.0) for k, v in s.items()} for met, s in scores.items()}
    return {k: max(shares[met][k] for met in shares) for k in layers}


class MetricDecoupledSensitivity(PassBase):
    """Set ``spec.sensitivity`` by metric-decoupled one-layer-at-a-time errors.

    Needs the quantizers attached (after InsertQuantizers) and Observe's full-precision
    outputs. Costs one forward per layer and batch. ``config.time_budget_s`` is a safety cap:
    if it fires, the layers not yet measured get the median score (``extra["metric_scores_from"]
    = "median (time cap)"``, and ``ctx.notes["time_cap"]``).

    Args:
        metrics: names from :data:`METRICS`.
        batches: how many calibration batches to measure on (each costs one forward per layer).
    """

    def __init__(self, ctx: PassContext, metrics: tuple[str, ...] = ("fidelity", "temporal", "detail"),
                 batches: int = 1) -> None:
        super().__init__()
        unknown = [m for m in metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; use some of {sorted(METRICS)}")
        self.ctx, self.metrics, self.batches = ctx, metrics, batches

    @torch.no_grad()
    def call(self, gm: fx.GraphModule) -> PassResult:
        if self.ctx.fp_outputs is None:
            raise RuntimeError("MetricDecoupledSensitivity needs the full-precision outputs: run Observe first")
        batches = self.ctx.calib[: self.batches]
        refs = self.ctx.fp_outputs[: self.batches]
        mods = [m for _, m in quant_nodes(gm) if m.wq is not None or m.aq is not None]
        saved = {id(m): (m.wq, m.aq) for m in mods}
        scores: dict[str, dict[str, float]] = {met: {} for met in self.metrics}
        deadline = train_deadline(self.ctx)
        for m in mods:
            m.wq = m.aq = None
        try:
            for m in tqdm(mods, desc="metric sensitivity", disable=not self.ctx.progress, leave=False):
                if cap_expired(deadline):
                    break
                m.wq, m.aq = saved[id(m)]
                m._wcache = None
                outs = run_batches(gm, batches, progress=False)
                for met in self.metrics:
                    vals = [METRICS[met](y, r) for y, r in zip(outs, refs)]
                    if all(v is not None for v in vals):
                        scores[met][m.spec.module_path] = sum(vals) / len(vals)
                m.wq = m.aq = None
        finally:
            for m in mods:
                m.wq, m.aq = saved[id(m)]
                m._wcache = None
        scores = {met: s for met, s in scores.items() if s}
        measured = [m.spec.module_path for m in mods if all(m.spec.module_path in s for s in scores.values())]
        for met, s in scores.items():  # out of time: unmeasured layers get the median
            med = float(torch.tensor(list(s.values())).median()) if s else 0.0
            for m in mods:
                s.setdefault(m.spec.module_path, med)
        sens = decouple(scores) if scores else {m.spec.module_path: 1.0 for m in mods}
        for m in mods:
            k = m.spec.module_path
            m.spec.sensitivity = float(f"{sens[k]:.6g}")
            m.spec.extra["metric_scores"] = {met: float(f"{scores[met][k]:.6g}") for met in scores}
            if k not in measured:
                m.spec.extra["metric_scores_from"] = "median (time cap)"
        if len(measured) < len(mods):
            note_time_cap(self.ctx, "metric_sensitivity", None, 0, len(mods) - len(measured))
        self.ctx.notes["metric_sensitivity"] = {"metrics": sorted(scores), "batches": len(batches),
                                                "measured": len(measured), "layers": len(mods)}
        return PassResult(gm, False)
