"""Learnable quantizers (PassionSR's LBQ) and its learnable equivalent transformation (LET).

Shape notation: ``X: (..., K)`` the quantized path's input, ``W: (N, K)`` its weight.

**LBQ**, learnable boundary quantizer: an asymmetric quantizer whose clipping bounds are
parameters, ``scale = (hi - lo) / (2^b - 1)``, ``zero = round(-lo / scale)``, trained through
the straight-through estimator (the scale gets the LSQ-style gradient, the zero point a
straight-through one). Weights: per output channel, bounds ``(N, 1)`` initialised at the
row's min/max. Activations: ``static`` per-tensor bounds initialised from the calibration
range (PassionSR's setting), or ``dynamic`` per-token min/max times learnable clipping
factors ``clip_lo``, ``clip_hi`` in (0, 1] (for low activation bits, a faithful variant
where a static range cannot hold video-token activations).

**LET**, learnable equivalent transformation: a per-channel scale ``t`` and shift ``d``,
``Qa((X - d) / t) . Qw(W t)^T + (d / t) . Qw(W t)^T``; the last term is a constant per
output channel (folded into the bias when lowered), so in full precision the layer is
unchanged for any ``t, d``. ``t`` starts at 1 on top of the SmoothQuant scale that the
shared :class:`~.smooth.Smooth` pass already moved into ``X_s = X / s`` (PassionSR
initialises LET from SmoothQuant with alpha 0.5), ``d`` starts at 0 (PassionSR's init).
"""
from __future__ import annotations

import torch
from torch import fx, nn

from lsgq_compiler.hadamard import rotate
from lsgq_compiler.quant import fake_quantize, qrange, round_ste

from .infra import PassBase, PassContext, PassResult, quant_nodes

ACT_MODES = ("static", "dynamic")


def learnable_fake_quant(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int) -> torch.Tensor:
    """Asymmetric fake quantization of ``x`` on ``[lo, hi]`` (broadcastable), gradients to all three."""
    qmin, qmax = qrange(bits, False)
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)  # the grid must hold 0 (zero padding, ReLU-like zeros)
    scale = ((hi - lo) / (qmax - qmin)).clamp_min(1e-8)
    zero = torch.clamp(round_ste(-lo / scale), qmin, qmax)
    return fake_quantize(x, scale, zero, bits, symmetric=False)


class LET(nn.Module):
    """Learnable per-channel scale ``let_scale: (K,)`` and shift ``let_shift: (K,)``."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.let_scale = nn.Parameter(torch.ones(k))
        self.let_shift = nn.Parameter(torch.zeros(k))

    def scale(self) -> torch.Tensor:
        return self.let_scale.abs().clamp_min(1e-4)


class LearnableWeightQuant(nn.Module):
    """LBQ for ``W: (N, K)``: per-row bounds ``lo, hi: (N, 1)``; applies LET's ``W t`` first."""

    def __init__(self, w: torch.Tensor, bits: int, let: LET | None = None) -> None:
        super().__init__()
        self.bits, self.granularity, self.symmetric = bits, "row", False
        w = w.detach().float()
        self.lo = nn.Parameter(w.amin(1, keepdim=True).clamp(max=0))
        self.hi = nn.Parameter(w.amax(1, keepdim=True).clamp(min=0))
        self._let = (let,)  # shared with the activation quantizer, which registers it

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        let = self._let[0]
        if let is not None:
            w = w * let.scale().to(w.dtype)
        return learnable_fake_quant(w, self.lo.to(w.dtype), self.hi.to(w.dtype), self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, learnable bounds per row, let={self._let[0] is not None}"


class LearnableActQuant(nn.Module):
    """LBQ for ``X: (..., K)``: ``static`` per-tensor bounds or ``dynamic`` per-token clipping."""

    def __init__(self, bits: int, mode: str, lo: float, hi: float, let: LET | None = None) -> None:
        super().__init__()
        if mode not in ACT_MODES:
            raise ValueError(f"unknown LBQ activation mode {mode!r}; use one of {ACT_MODES}")
        self.bits, self.mode, self.symmetric = bits, mode, False
        self.granularity = "tensor" if mode == "static" else "token"
        if mode == "static":
            self.lo, self.hi = nn.Parameter(torch.tensor(float(lo))), nn.Parameter(torch.tensor(float(hi)))
        else:
            self.clip_lo, self.clip_hi = nn.Parameter(torch.tensor(1.0)), nn.Parameter(torch.tensor(1.0))
        self.let = let

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.let is not None:
            t, d = self.let.scale().to(x.dtype), self.let.let_shift.to(x.dtype)
            return self._quant((x - d) / t) + d / t
        return self._quant(x)

    def _quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "static":
            return learnable_fake_quant(x, self.lo.to(x.dtype), self.hi.to(x.dtype), self.bits)
        lo = x.detach().amin(-1, keepdim=True) * self.clip_lo.clamp(0.05, 1.0).to(x.dtype)
        hi = x.detach().amax(-1, keepdim=True) * self.clip_hi.clamp(0.05, 1.0).to(x.dtype)
        return learnable_fake_quant(x, lo, hi, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, learnable bounds, let={self.let is not None}"


@torch.no_grad()
def calibrated_input_range(m) -> tuple[float, float]:
    """Min and max over all calibration calls of the quantized path's input (after smoothing
    and rotation), from the sampled tokens. PassionSR tracks a running average of per-batch
    ranges; with a handful of clips the extremes generalise better to unseen clips, and the
    bounds are trained afterwards anyway."""
    st = m.calib_stats
    if st is None or not st.samples:
        raise RuntimeError(f"{m.spec.module_path}: LBQ needs calibration samples (run Observe first)")
    lo, hi = 0.0, 0.0
    for x in st.samples:
        if m.smooth is not None:
            x = x / m.smooth.float()
        if m.rot_block:
            x = rotate(x, m.rot_signs.float(), m.rot_block)
        lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return lo, hi


class LearnableQuantizers(PassBase):
    """Attach LBQ weight/activation quantizers (and LET when ``let``) to every quantized
    layer, in place of :class:`~.insert_quantizers.InsertQuantizers`. Needs Observe first
    (activation bounds); must follow smoothing, low-rank and rotation.

    Args:
        act_mode: ``"static"`` (learnable per-tensor bounds) or ``"dynamic"`` (per-token range
            with learnable clipping factors).
        let: add the learnable equivalent transformation.
    """

    def __init__(self, ctx: PassContext, act_mode: str = "static", let: bool = False) -> None:
        super().__init__()
        if act_mode not in ACT_MODES:
            raise ValueError(f"unknown LBQ activation mode {act_mode!r}; use one of {ACT_MODES}")
        self.ctx, self.act_mode, self.let = ctx, act_mode, let

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            s = m.spec
            let = LET(m.in_features) if self.let and s.act_bits else None
            m.wq = LearnableWeightQuant(m.weight, s.weight_bits, let) if s.weight_bits else None
            m.aq = None
            if s.act_bits:
                lo, hi = calibrated_input_range(m) if self.act_mode == "static" else (0.0, 0.0)
                m.aq = LearnableActQuant(s.act_bits, self.act_mode, lo, hi, let)
                s.act_quantizer = "static" if self.act_mode == "static" else "dynamic"
                s.act_granularity = m.aq.granularity
                s.act_symmetric = False
            if s.quantized:
                s.weight_symmetric, s.weight_granularity = False, "row"
                s.extra["lbq"] = {"act": self.act_mode, "let": let is not None}
            m._wcache = None
        return PassResult(gm, False)
