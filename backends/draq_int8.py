"""DRAQ in its deployable form: an integer GEMM with the channel range folded into the weight.

Shape notation: ``X: (T, K)`` one batch element's tokens, ``W: (N, K)``, ``s: (K,)``.

DRAQ (:func:`lsgq_compiler.quantizers.draq`) quantizes ``X / s`` per token
(``Q = round(qmax (X / s) / d_t)``), so ``X^ Qw(W)^T = (d_t / qmax) . Q (Qw(W) diag(s))^T``:

- per call (per batch element): ``s = max_t |X|`` (online) and ``Q: (T, K)`` int8 per token;
- ``Qw(W) diag(s)`` requantized per output row to int8, ``V: (N, K)`` with scale ``sigma: (N,)``:
  O(N K) per call against the GEMM's O(T N K); with a calibrated ``s`` (``draq_static``)
  ``V`` is computed once;
- ``Y = (Q V^T) . d_t . sigma_n + b``, ``Q V^T`` an int8 x int8 -> int32 GEMM (``torch._int_mm``).

The only difference from the fake-quant layer is the 8-bit requantization of ``Qw(W) diag(s)``.
"""
from __future__ import annotations

import torch
from torch import nn

from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.quant import quantize_to_int


def int8_mm(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a: (M, K) int8 @ b: (K, N) int8 -> (M, N) int32``.

    ``torch._int_mm`` takes any shape on the CPU; cuBLAS needs ``M > 16`` and ``K, N``
    multiples of 8, otherwise this falls back to an exact int32 matmul.
    """
    if a.is_cuda:
        if not (a.shape[0] > 16 and a.shape[1] % 8 == 0 and b.shape[1] % 8 == 0):
            return (a.double() @ b.double()).round().int()
        return torch._int_mm(a.contiguous(), b.contiguous())  # cuBLAS: a non-contiguous mat2 is wrong
    return torch._int_mm(a.contiguous(), b)


def requantize_rows(a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per row: ``a: (N, K) -> (V int8 (N, K), sigma (N,))`` with ``a ~ sigma V``."""
    sigma = a.abs().amax(dim=1).clamp_min(1e-12) / 127.0
    v = torch.round(a / sigma[:, None]).clamp(-127, 127).to(torch.int8)
    return v, sigma


class DRAQInt8Linear(nn.Module):
    """The quantized path of a DRAQ layer, ``x_R: (..., K) -> (..., N)``, on an int8 GEMM.

    Buffers: the plan's weight codes ``w_codes`` with ``w_scale``/``w_zero`` (as stored by
    :func:`~lsgq_compiler.quant.quantize_to_int`), ``bias``, and for the static variant
    ``channel_scale: (K,)`` with the precomputed ``v: (N, K) int8``, ``sigma: (N,)``.
    """

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        s, aq = layer.spec, layer.aq
        if aq is None or aq.mode not in ("draq", "draq_static") or aq.bits != 8:
            raise ValueError(f"{s.module_path}: DRAQInt8Linear needs an 8-bit DRAQ activation quantizer")
        self.out_features, self.in_features = layer.out_features, layer.in_features
        self.qmax = 2 ** (aq.bits - 1) - 1
        w = layer.weight.detach().float()
        wq = layer.wq
        self.w_shape = tuple(w.shape)
        if wq is None:
            self.register_buffer("w_codes", w)
            self.register_buffer("w_scale", None)
            self.register_buffer("w_zero", None)
        else:
            codes, scale, zero = quantize_to_int(w, wq.bits, wq.symmetric, wq.granularity, wq.group_size)
            self.register_buffer("w_codes", codes)
            self.register_buffer("w_scale", scale.float())
            self.register_buffer("w_zero", zero.float())
        b = layer.bias
        self.register_buffer("bias", None if b is None else b.detach().float().clone())
        self.register_buffer("channel_scale", None)
        self.register_buffer("v", None)
        self.register_buffer("sigma", None)
        if aq.mode == "draq_static":
            self.channel_scale = aq.channel_scale.detach().float().clamp_min(1e-8).clone()
            self.v, self.sigma = requantize_rows(self.dequantized_weight() * self.channel_scale)

    def dequantized_weight(self) -> torch.Tensor:
        """``Qw(W_R): (N, K)`` float32, from the stored codes."""
        if self.w_scale is None:
            return self.w_codes
        return ((self.w_codes.float() - self.w_zero) * self.w_scale).reshape(self.w_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, k = x.shape[:-1], x.shape[-1]
        xb = x.reshape(x.shape[0], -1, k) if x.dim() > 2 else x.reshape(1, -1, k)
        wq = None if self.v is not None else self.dequantized_weight()
        outs = []
        for xi in xb.float():  # the channel range is per batch element, as in the fake-quant DRAQ
            if self.v is None:
                s = xi.abs().amax(dim=0).clamp_min(1e-8)
                v, sigma = requantize_rows(wq * s)
            else:
                s, v, sigma = self.channel_scale, self.v, self.sigma
            xs = xi / s
            d = xs.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / self.qmax
            q = torch.clamp(torch.round(xs / d), -self.qmax - 1, self.qmax).to(torch.int8)
            outs.append(int8_mm(q, v.t()).float() * d * sigma)
        y = torch.stack(outs).reshape(*lead, self.out_features)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, {'static' if self.v is not None else 'online'}"
