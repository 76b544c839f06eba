"""Per-channel smoothing (SmoothQuant): ``Y = (X diag(s)^-1)(diag(s) W)``.

``s_j = max|X_j|^alpha / max|W_j|^(1-alpha)`` from calibrated input ranges. Applied as a
division of the layer input here (exact in full precision); lowering may fold it into the
producer (a LayerNorm or the previous linear).
"""
from __future__ import annotations

import torch
from torch import fx

from .infra import PassBase, PassResult, quant_nodes


def smoothing_scale(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """act_absmax: ``(K,)``, weight: ``(N, K)`` -> ``s: (K,)``."""
    a = act_absmax.float().clamp_min(1e-5)
    w = weight.detach().abs().amax(0).float().clamp_min(1e-5)
    return (a.pow(alpha) / w.pow(1 - alpha)).clamp(1e-4, 1e4)


class Smooth(PassBase):
    """Smooth every quantized layer with ``spec.smooth_alpha`` set. Needs Observe first; must
    precede low-rank and rotation."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            a = m.spec.smooth_alpha
            if a is None or not m.spec.act_bits or m.smooth is not None:
                continue
            if m.calib_stats is None:
                raise RuntimeError(f"{m.spec.module_path}: smoothing needs calibration statistics (run Observe)")
            m.apply_smoothing(smoothing_scale(m.calib_stats.absmax, m.weight, a))
        return PassResult(gm, False)
