"""Quantizer modules used inside :class:`~lsgq_compiler.qlinear.QuantLinear`.

``WeightQuant`` and ``ActQuant`` wrap the primitives in :mod:`lsgq_compiler.quant`.
DRAQ (LSGQuant's Dynamic Range Adaptive Quantizer) is written here by hand because no
torchao fake quantizer offers an online per-channel range followed by per-token
quantization.
"""
from __future__ import annotations

import torch
from torch import nn

from .quant import compute_qparams, fake_quantize, quantize_dequantize, round_ste

ACT_MODES = ("dynamic", "static", "draq", "draq_static")


def draq(x: torch.Tensor, bits: int, channel_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Dynamic Range Adaptive Quantizer (LSGQuant), straight-through gradients.

    ``s_c = max_t |X[t, c]|`` (online over this call's tokens, per batch element, unless
    ``channel_scale`` is given: the static variant), ``Xs = X / s_c``,
    ``d_t = max_c |Xs[t, c]|``, ``Q = clamp(round(qmax Xs / d_t))``,
    ``X^ = Q / qmax * d_t * s_c``.

    Args:
        x: ``(B, T, K)`` or ``(T, K)``.
        channel_scale: ``(K,)`` for the static variant.
    Returns:
        ``X^``, same shape as ``x``.
    """
    qmax = 2 ** (bits - 1) - 1
    if channel_scale is None:
        dims = tuple(range(1, x.dim() - 1)) if x.dim() > 2 else (0,)
        s = x.detach().abs().amax(dim=dims, keepdim=True).clamp_min(1e-8)
    else:
        s = channel_scale.to(x.dtype).clamp_min(1e-8)
    xs = x / s
    d = xs.detach().abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / qmax
    q = torch.clamp(round_ste(xs / d), -qmax - 1, qmax)
    return q * d * s


class WeightQuant(nn.Module):
    """Min/max fake quantization of a weight ``W: (N, K)`` per output row or per group,
    recomputed from the current weight (so QAT sees straight-through gradients)."""

    def __init__(self, bits: int, granularity: str = "row", symmetric: bool = False,
                 group_size: int | None = None) -> None:
        super().__init__()
        self.bits, self.granularity, self.symmetric, self.group_size = bits, granularity, symmetric, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return quantize_dequantize(w, self.bits, self.symmetric, self.granularity, self.group_size)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, granularity={self.granularity}, symmetric={self.symmetric}"


class ActQuant(nn.Module):
    """Activation fake quantizer for ``X: (..., K)``.

    Modes: ``dynamic`` (min/max of this call at ``granularity``), ``static`` (scale and
    zero point from calibration, per tensor), ``draq`` (online per-channel range, per
    token), ``draq_static`` (channel range from calibration).
    """

    def __init__(self, bits: int, mode: str = "dynamic", granularity: str = "token",
                 symmetric: bool = True) -> None:
        super().__init__()
        if mode not in ACT_MODES:
            raise ValueError(f"unknown activation quantizer {mode!r}; use one of {ACT_MODES}")
        self.bits, self.mode, self.granularity, self.symmetric = bits, mode, granularity, symmetric
        self.register_buffer("scale", None)
        self.register_buffer("zero_point", None)
        self.register_buffer("channel_scale", None)

    def set_static_range(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        """Static per-tensor parameters from calibrated min/max."""
        self.scale, self.zero_point = compute_qparams(torch.stack([lo, hi]), self.bits, self.symmetric, "tensor")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "dynamic":
            return quantize_dequantize(x, self.bits, self.symmetric, self.granularity)
        if self.mode == "static":
            if self.scale is None:
                raise RuntimeError("static activation quantizer was not calibrated; run calibration first")
            return fake_quantize(x, self.scale.to(x.dtype), self.zero_point.to(x.dtype), self.bits, self.symmetric)
        if self.mode == "draq_static" and self.channel_scale is None:
            raise RuntimeError("static DRAQ needs a calibrated channel_scale; run calibration first")
        return draq(x, self.bits, self.channel_scale if self.mode == "draq_static" else None)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}, granularity={self.granularity}, symmetric={self.symmetric}"
