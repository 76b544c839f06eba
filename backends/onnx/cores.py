"""Per-layer integer cores: the modules that replace a QuantLinear in an ONNX-lowered model,
each calling one custom op of :mod:`.ops` with the layer's codes and scales."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.quant import quantize_to_int

from .ops import dq_linear, int8_dynamic_linear, int8_static_linear, int8_token_linear

def _bias(layer: QuantLinear) -> torch.Tensor:
    return layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(layer.out_features)


#: 8-bit weight codes are stored as uint8 with this zero point (symmetric int8 codes + 128): onnxruntime's
#: x86 kernels multiply uint8 x int8 pairwise into int16 with saturation on CPUs without VNNI (AVX2 and
#: older), which wrecks results there (measured 21-24 dB against the torch model on an AVX-only host);
#: uint8 x uint8 runs the exact widening path on every x86 CPU, and the values are the same
WEIGHT_ZERO = 128


def _uint8_rows(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric 8-bit per output channel, stored offset: ``(w_q (K, N) uint8 = int8 code + 128, w_scale (N,))``
    (zero point :data:`WEIGHT_ZERO`)."""
    q, scale, _ = quantize_to_int(layer.weight.detach().float(), 8, True, "row")
    return (q.to(torch.int16) + WEIGHT_ZERO).to(torch.uint8).t().contiguous(), scale.reshape(-1)


class TokenInt8Core(nn.Module):
    """The plan's per-token activations and per-row weight codes on ``MatMulInteger``."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        s, w = layer.spec, layer.weight.detach().float()
        if s.weight_bits:
            q, scale, zero = quantize_to_int(w, s.weight_bits, s.weight_symmetric, "row")
            shift = WEIGHT_ZERO if s.weight_symmetric else 0  # symmetric codes [-2^(b-1), 2^(b-1)) -> uint8
            w8, wz = q.to(torch.int16) + shift, zero.reshape(-1).to(torch.int16) + shift
        else:
            raise ValueError(f"{s.module_path}: TokenInt8Core needs quantized weights")
        self.register_buffer("w8", w8.to(torch.uint8).t().contiguous())
        self.register_buffer("w_zero", wz.to(torch.uint8))
        self.register_buffer("w_colsum", (w8.float() - wz[:, None]).sum(1))
        self.register_buffer("w_scale", scale.reshape(-1).float())
        self.register_buffer("bias", _bias(layer))
        self.act_symmetric = bool(s.act_symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_token_linear(x, self.w8, self.w_zero, self.w_colsum, self.w_scale, self.bias, self.act_symmetric)


class DynamicInt8Core(nn.Module):
    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        w_q, w_scale = _uint8_rows(layer)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_zero", torch.tensor(WEIGHT_ZERO, dtype=torch.uint8))
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", _bias(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_dynamic_linear(x, self.w_q, self.w_zero, self.w_scale, self.bias)


class StaticInt8Core(nn.Module):
    """Static QDQ; scales come from :meth:`observe` then :meth:`finalize` (calibration)."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        w_q, w_scale = _uint8_rows(layer)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", _bias(layer))
        for name in ("x_scale", "y_scale"):
            self.register_buffer(name, torch.ones(()))
        for name in ("x_zero", "y_zero"):
            self.register_buffer(name, torch.zeros((), dtype=torch.uint8))
        self.register_buffer("bias_q", torch.zeros(layer.out_features, dtype=torch.int32))
        self.register_buffer("bias_scale", torch.ones(layer.out_features))
        self.register_buffer("w_zero", torch.full((layer.out_features,), WEIGHT_ZERO, dtype=torch.uint8))
        self.register_buffer("bias_zero", torch.zeros(layer.out_features, dtype=torch.int32))
        self.ranges: dict[str, list[float]] | None = None

    def observe(self) -> None:
        self.ranges = {"x": [0.0, 0.0], "y": [0.0, 0.0]}

    @staticmethod
    def _qparams(lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
        s = max(hi - lo, 1e-8) / 255.0
        return torch.tensor(s), torch.tensor(min(max(round(-lo / s), 0), 255), dtype=torch.uint8)

    def finalize(self) -> None:
        (xl, xh), (yl, yh) = self.ranges["x"], self.ranges["y"]
        self.x_scale, self.x_zero = self._qparams(xl, xh)
        self.y_scale, self.y_zero = self._qparams(yl, yh)
        self.bias_scale = self.x_scale * self.w_scale
        self.bias_q = torch.round(self.bias / self.bias_scale).to(torch.int32)
        self.ranges = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.ranges is not None:
            y = x @ ((self.w_q.float() - self.w_zero.float()) * self.w_scale) + self.bias
            for key, t in (("x", x), ("y", y)):
                r = self.ranges[key]
                r[0], r[1] = min(r[0], t.min().item()), max(r[1], t.max().item())
            return y
        return int8_static_linear(x, self.x_scale, self.x_zero, self.w_q, self.w_scale, self.w_zero, self.bias_q,
                                  self.bias_scale, self.bias_zero, self.y_scale, self.y_zero)


def container_bits(bits: int) -> int:
    """Weight codes are stored as packed uint4 (bits <= 4) or uint8 (5 to 8 bits)."""
    return 4 if bits <= 4 else 8


def nbits_fusable(bits: int, block: int) -> bool:
    """Whether ORT's CPU provider fuses ``DQ(codes, block) -> MatMul`` into ``MatMulNBits``
    (uint4 or uint8 codes, blocks a power of two >= 16)."""
    return block >= 16 and block & (block - 1) == 0


def weight_codes(layer: QuantLinear, block: int | None = None) -> dict[str, Any]:
    """The layer's weight codes as ``(K, N)`` unsigned integers, blocked along K.

    With ``block=None`` the plan's own quantizer (``row``: one block of K; ``group``) gives
    the codes, so ``DQ(codes)`` equals the fake-quant weight exactly. Otherwise ``W_R`` is
    requantized (asymmetric, ``block`` per group) at the plan's bit-width.
    """
    s, w = layer.spec, layer.weight.detach().float()
    bits = s.weight_bits
    if block is None:
        sym, gran, gs = s.weight_symmetric, s.weight_granularity, s.group_size
        block = gs if gran == "group" else layer.in_features
    else:
        sym, gran, gs = False, "group", block
    q, scale, zero = quantize_to_int(w, bits, sym, gran, gs)
    n, k = w.shape
    g = k // block
    offset = 2 ** (bits - 1) if sym else 0  # store unsigned: q + offset with zero point + offset
    q = (q.to(torch.int16) + offset).to(torch.uint8).reshape(n, k)
    zero = (zero + offset).reshape(n, g)
    return {"codes": q.t().contiguous(), "scale": scale.reshape(n, g).t().contiguous().float(),
            "zero": zero.t().contiguous().to(torch.uint8), "bits": bits, "block": block}


class DQCore(nn.Module):
    """``aq(x) @ DQ(codes) + b``: the plan's activation fake quantizer (optional) and
    dequantized integer weights."""

    def __init__(self, layer: QuantLinear, block: int | None = None, act_quant: bool = True) -> None:
        super().__init__()
        c = weight_codes(layer, block)
        self.bits, self.block = c["bits"], c["block"]
        for k in ("codes", "scale", "zero"):
            self.register_buffer(k, c[k])
        self.register_buffer("bias", _bias(layer))
        self.aq = layer.aq if act_quant else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.aq is not None:
            x = self.aq(x)
        return dq_linear(x, self.codes, self.scale, self.zero, self.bias, self.bits, self.block)
