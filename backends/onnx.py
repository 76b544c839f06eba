"""Export a :class:`QuantizedModel` to ONNX graphs that onnxruntime runs with integer kernels.

Shape notation: ``x: (..., K)``, weights laid out ``(K, N)`` as ONNX MatMul wants them.

Each quantized linear becomes a torch custom op (``lsgq_onnx::*``) with a reference
implementation (so the lowered torch model runs the export's semantics) and an ONNX
translation (``custom_translation_table`` of ``torch.onnx.export(dynamo=True)``):

- **W8A8, per tensor** (default ``act="tensor"``): ``DynamicQuantizeLinear`` (uint8, per
  tensor) -> ``MatMulInteger`` with int8 symmetric per-channel weights; ORT fuses it into
  ``DynamicQuantizeMatMul``. Fastest; per-tensor activations deviate from a per-token plan.
- **W8A8, per token** (``act="token"``): the plan's own dynamic activation quantizer (per
  token, asymmetric or symmetric) written as ONNX arithmetic, giving uint8 codes, and the
  plan's own weight codes shifted into int8 with a per-column zero point: ``MatMulInteger``
  (integer GEMM) plus an exact zero-point correction. The torch fake-quant model's numbers,
  but ORT runs the quantization and the per-token epilogue as separate elementwise ops
  (no fused kernel, and ``MatMulInteger`` takes no per-row zero point), which costs more
  than the int8 GEMM saves at DOVE-like widths on CPU.
- **W8A8, static** (``act="static"``): QDQ with calibrated uint8 per-tensor input and
  output, int8 per-channel weights and an int32 bias (scale ``s_x s_w``): ORT fuses
  ``DQ -> MatMul -> Add -> Q`` into ``QGemm``.
- **4-bit weights** (W4A16, W4A8): ``DequantizeLinear`` of packed uint4 weights, blocked on
  axis 0 (opset 21), feeding ``MatMul``: ORT fuses it into ``MatMulNBits`` when the block is
  a power of two >= 16 (``w4_block`` requantizes per-row weights into such blocks).
- **everything else** (W4A4, W6A6, DRAQ...): the plan's activation fake quantizer as float
  ops (identical to the torch model) and ``DequantizeLinear`` of the weight codes: a
  simulation, reported as ``real_kernel: False``.

Per-token dynamic activation quantization has no fused ORT kernel: ``token`` spells it out;
``tensor`` and ``static`` trade exactness for per-tensor activations (a deviation from a
per-token plan, stated in each layer's note).
"""
from __future__ import annotations

import argparse
import copy
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import fx, nn

from lsgq_compiler.api import QuantizedModel
from lsgq_compiler.capture import normalize_inputs
from lsgq_compiler.errors import user_error
from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.quant import quantize_to_int

from .common import full_precision_info, lower_layers

OPSET = 21
ACT_MODES = ("tensor", "token", "static")
INTEGER_OPS = ("QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "MatMulNBits", "QLinearConv")


# ----------------------------------------------------------------------------- custom ops
@torch.library.custom_op("lsgq_onnx::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(x: torch.Tensor, w_q: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``DynamicQuantizeLinear(x) -> MatMulInteger(., w_q) * s_x s_w + bias``; ``w_q: (K, N) int8``."""
    xq, s, z = _dynamic_codes(x)
    return ((xq - z) @ w_q.float()) * (s * w_scale) + bias


@int8_dynamic_linear.register_fake
def _(x, w_q, w_scale, bias):
    return x.new_empty(*x.shape[:-1], w_q.shape[1])


@torch.library.custom_op("lsgq_onnx::int8_token_linear", mutates_args=())
def int8_token_linear(x: torch.Tensor, w8: torch.Tensor, w_zero: torch.Tensor, w_colsum: torch.Tensor,
                      w_scale: torch.Tensor, bias: torch.Tensor, act_symmetric: bool) -> torch.Tensor:
    """Per-token dynamic 8-bit activations (the fake quantizer's formula), int8 weight codes.

    ``w8: (K, N)`` int8 with per-column zero point ``w_zero: (N,)`` (the plan's codes shifted by
    -128 when asymmetric), ``w_colsum[n] = sum_k (w8 - w_zero)[k, n]``. With ``u`` the uint8
    activation codes and ``zu`` their zero point: ``Y = (u (w8 - w_zero) - zu w_colsum) s w_scale + b``.
    """
    u, zu, s = _token_codes(x, act_symmetric)
    acc = u @ (w8.float() - w_zero.float())
    return (acc - zu * w_colsum) * (s * w_scale) + bias


def _token_codes(x: torch.Tensor, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``compute_qparams``/``fake_quantize`` of :mod:`lsgq_compiler.quant` per token at 8 bits, as
    unsigned codes ``u`` (float) with zero point ``zu`` and scale ``s`` (``(..., 1)`` each)."""
    if symmetric:
        s = (x.abs().amax(-1, keepdim=True) / 127).clamp_min(1e-8)
        return torch.clamp(torch.round(x / s), -128, 127) + 128, torch.full_like(s, 128.0), s
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    s = ((hi - lo) / 255).clamp_min(1e-8)
    z = torch.clamp(-torch.round(lo / s), 0, 255)
    return torch.clamp(torch.round(x / s) + z, 0, 255), z, s


@int8_token_linear.register_fake
def _(x, w8, w_zero, w_colsum, w_scale, bias, act_symmetric):
    return x.new_empty(*x.shape[:-1], w8.shape[1])


@torch.library.custom_op("lsgq_onnx::int8_static_linear", mutates_args=())
def int8_static_linear(x: torch.Tensor, x_scale: torch.Tensor, x_zero: torch.Tensor, w_q: torch.Tensor,
                       w_scale: torch.Tensor, w_zero: torch.Tensor, bias_q: torch.Tensor, bias_scale: torch.Tensor,
                       bias_zero: torch.Tensor, y_scale: torch.Tensor, y_zero: torch.Tensor) -> torch.Tensor:
    """QDQ linear, uint8 per-tensor input/output (static), int8 per-channel ``w_q: (K, N)``, int32 bias.

    ORT fuses the pattern into QGemm only with constant scales and explicit zero points, hence
    ``bias_scale = x_scale * w_scale`` and the (zero) ``w_zero``/``bias_zero`` as inputs."""
    xz, yz = x_zero.float(), y_zero.float()
    xq = torch.clamp(torch.round(x / x_scale) + xz, 0, 255)
    y = ((xq - xz) @ w_q.float() + bias_q.float()) * bias_scale
    return (torch.clamp(torch.round(y / y_scale) + yz, 0, 255) - yz) * y_scale


@int8_static_linear.register_fake
def _(x, x_scale, x_zero, w_q, w_scale, w_zero, bias_q, bias_scale, bias_zero, y_scale, y_zero):
    return x.new_empty(*x.shape[:-1], w_q.shape[1])


@torch.library.custom_op("lsgq_onnx::dq_linear", mutates_args=())
def dq_linear(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bias: torch.Tensor,
              bits: int, block: int) -> torch.Tensor:
    """``x @ DQ(codes) + bias``; ``codes: (K, N)`` uint8 holding ``bits``-bit values, ``scale``/``zero``
    ``(K // block, N)`` (blocks along K)."""
    w = (codes.float() - zero.float().repeat_interleave(block, 0)) * scale.repeat_interleave(block, 0)
    return x @ w + bias


@dq_linear.register_fake
def _(x, codes, scale, zero, bias, bits, block):
    return x.new_empty(*x.shape[:-1], codes.shape[1])


@torch.library.custom_op("lsgq_onnx::int8_tensor_attention", mutates_args=())
def int8_tensor_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          smooth_k: bool) -> torch.Tensor:
    """8-bit ``Q K^T`` as onnxruntime runs it (``DynamicQuantizeLinear`` x2 -> ``MatMulIntegerToFloat``),
    float softmax and ``P V``. ``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)`` -> ``(B, H, Nq, D)``.

    The softmax scale is folded into Q and K is smoothed (token mean subtracted: exact before
    quantization, see :mod:`lsgq_compiler.kernels.attention`) before each is quantized to uint8
    per tensor. Integer products are exact in float32 here (|sum| < 2^22), so this matches ORT
    up to the rounding of ``x / scale`` at ties.
    """
    uq, sq, zq = _dynamic_codes(q.float() * scale)
    kf = k.float()
    if smooth_k:
        kf = kf - kf.mean(dim=-2, keepdim=True)
    uk, sk, zk = _dynamic_codes(kf)
    p = torch.softmax(((uq - zq) @ (uk - zk).transpose(-1, -2)) * (sq * sk), dim=-1)
    return (p @ v.float()).to(q.dtype)


def _dynamic_codes(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ONNX ``DynamicQuantizeLinear``: uint8 codes (as float), scale and zero point, per tensor."""
    lo, hi = x.amin().clamp(max=0), x.amax().clamp(min=0)
    s = ((hi - lo) / 255).clamp_min(1e-12)
    z = torch.clamp(torch.round(-lo / s), 0, 255)
    return torch.clamp(torch.round(x / s) + z, 0, 255), s, z


@int8_tensor_attention.register_fake
def _(q, k, v, scale, smooth_k):
    return torch.empty_like(q)


@torch.library.custom_op("lsgq_onnx::cpu_int8_attention", mutates_args=())
def cpu_int8_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, heads: int) -> torch.Tensor:
    """8-bit attention as onnxruntime runs it with lsgq's custom op ``com.lsgq::Int8Attention``
    (:mod:`lsgq_compiler.kernels.cpu_attention`: INT8 ``Q K^T`` on AVX-512 VNNI, per-row Q and
    per-64-key K scales, fp32 softmax and ``P V``). ``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)``,
    ``heads == H`` -> ``(B, H, Nq, D)``; runs the same C++ kernel, on the CPU."""
    from lsgq_compiler.kernels.cpu_attention import cpu_int8_attention

    b, h, nq, d = q.shape

    def bsd(x: torch.Tensor) -> np.ndarray:
        return x.detach().float().cpu().transpose(1, 2).reshape(b, x.shape[2], h * d).contiguous().numpy()

    out = cpu_int8_attention(bsd(q), bsd(k), bsd(v), heads, scale)
    return torch.from_numpy(out).view(b, nq, h, d).transpose(1, 2).to(device=q.device, dtype=q.dtype)


@cpu_int8_attention_op.register_fake
def _(q, k, v, scale, heads):
    return torch.empty_like(q)


@torch.library.custom_op("lsgq_onnx::attention", mutates_args=())
def mha_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, heads: int) -> torch.Tensor:
    """Full-precision attention exported as onnxruntime's fused ``com.microsoft.MultiHeadAttention``
    (one kernel, no materialized score tensor per op). ``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)``,
    ``heads == H``."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, scale=scale)


@mha_attention.register_fake
def _(q, k, v, scale, heads):
    return torch.empty_like(q)


def _mha_schema():
    """The part of onnxruntime's ``com.microsoft.MultiHeadAttention`` schema we use (q, k, v as
    ``(B, N, H*D)``; ``num_heads``, ``scale``): onnx itself has no schema for contrib ops."""
    from onnx.defs import OpSchema

    p = OpSchema.FormalParameter
    return OpSchema("MultiHeadAttention", "com.microsoft", 1, inputs=[p("query", "T"), p("key", "T"), p("value", "T")],
                    outputs=[p("output", "T")], type_constraints=[("T", ["tensor(float)", "tensor(float16)"], "")],
                    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
                                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale")])


def _lsgq_attention_schema():
    """Schema of lsgq's onnxruntime custom op ``com.lsgq::Int8Attention`` (inputs and attributes
    as ``com.microsoft.MultiHeadAttention``; registered by ``ort_session``)."""
    from onnx.defs import OpSchema

    p = OpSchema.FormalParameter
    return OpSchema("Int8Attention", "com.lsgq", 1, inputs=[p("query", "T"), p("key", "T"), p("value", "T")],
                    outputs=[p("output", "T")], type_constraints=[("T", ["tensor(float)"], "")],
                    attributes=[OpSchema.Attribute("num_heads", OpSchema.AttrType.INT, "heads"),
                                OpSchema.Attribute("scale", OpSchema.AttrType.FLOAT, "softmax scale")])


def _translations() -> dict:
    from onnx import TensorProto
    from onnxscript import opset21 as op
    from onnxscript.values import Op, Opset

    def int8_dynamic(x, w_q, w_scale, bias):
        xq, s, z = op.DynamicQuantizeLinear(x)
        acc = op.Cast(op.MatMulInteger(xq, w_q, z), to=TensorProto.FLOAT)
        return op.Add(op.Mul(acc, op.Mul(s, w_scale)), bias)

    def int8_token(x, w8, w_zero, w_colsum, w_scale, bias, act_symmetric: bool):
        eps = op.Constant(value_float=1e-8)
        if act_symmetric:
            s = op.Max(op.Div(op.ReduceMax(op.Abs(x), op.Constant(value_ints=[-1]), keepdims=1),
                              op.Constant(value_float=127.0)), eps)
            q = op.Clip(op.Round(op.Div(x, s)), op.Constant(value_float=-128.0), op.Constant(value_float=127.0))
            zu = op.Constant(value_float=128.0)
            u = op.Add(q, zu)
        else:
            zero, top = op.Constant(value_float=0.0), op.Constant(value_float=255.0)
            axes = op.Constant(value_ints=[-1])
            lo = op.Min(op.ReduceMin(x, axes, keepdims=1), zero)
            hi = op.Max(op.ReduceMax(x, axes, keepdims=1), zero)
            s = op.Max(op.Div(op.Sub(hi, lo), top), eps)
            zu = op.Clip(op.Neg(op.Round(op.Div(lo, s))), zero, top)
            u = op.Clip(op.Add(op.Round(op.Div(x, s)), zu), zero, top)
        acc = op.Cast(op.MatMulInteger(op.Cast(u, to=TensorProto.UINT8), w8, None, w_zero), to=TensorProto.FLOAT)
        y = op.Mul(op.Sub(acc, op.Mul(zu, w_colsum)), op.Mul(s, w_scale))
        return op.Add(y, bias)

    def int8_static(x, x_scale, x_zero, w_q, w_scale, w_zero, bias_q, bias_scale, bias_zero, y_scale, y_zero):
        k = op.Shape(x, start=-1)
        x2 = op.Reshape(x, op.Concat(op.Constant(value_ints=[-1]), k, axis=0))
        xd = op.DequantizeLinear(op.QuantizeLinear(x2, x_scale, x_zero), x_scale, x_zero)
        wd = op.DequantizeLinear(w_q, w_scale, w_zero, axis=1)
        bd = op.DequantizeLinear(bias_q, bias_scale, bias_zero, axis=0)
        y = op.Add(op.MatMul(xd, wd), bd)
        yd = op.DequantizeLinear(op.QuantizeLinear(y, y_scale, y_zero), y_scale, y_zero)
        out_shape = op.Concat(op.Shape(x, end=-1), op.Shape(w_q, start=1), axis=0)
        return op.Reshape(yd, out_shape)

    def dq(x, codes, scale, zero, bias, bits: int, block: int):
        if bits <= 4:
            codes, zero = op.Cast(codes, to=TensorProto.UINT4), op.Cast(zero, to=TensorProto.UINT4)
        w = op.DequantizeLinear(codes, scale, zero, axis=0, block_size=block)
        return op.Add(op.MatMul(x, w), bias)

    def int8_attention(q, k, v, scale: float, smooth_k: bool):
        qu, sq, zq = op.DynamicQuantizeLinear(op.Mul(q, op.Constant(value_float=scale)))
        if smooth_k:
            k = op.Sub(k, op.ReduceMean(k, op.Constant(value_ints=[-2]), keepdims=1))
        ku, sk, zk = op.DynamicQuantizeLinear(k)
        acc = op.Cast(op.MatMulInteger(qu, op.Transpose(ku, perm=[0, 1, 3, 2]), zq, zk), to=TensorProto.FLOAT)
        return op.MatMul(op.Softmax(op.Mul(acc, op.Mul(sq, sk)), axis=-1), v)

    mha = Op(Opset("com.microsoft", 1), "MultiHeadAttention", _mha_schema())  # an onnxruntime contrib op

    lsgq_attn = Op(Opset("com.lsgq", 1), "Int8Attention", _lsgq_attention_schema())  # lsgq's custom op

    def bsd(x):  # (B, H, N, D) -> (B, N, H*D); ORT cancels it against the model's own transpose
        return op.Reshape(op.Transpose(x, perm=[0, 2, 1, 3]), op.Constant(value_ints=[0, 0, -1]))

    def attention(q, k, v, scale: float, heads: int):
        out = mha(bsd(q), bsd(k), bsd(v), num_heads=heads, scale=scale)
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1])), perm=[0, 2, 1, 3])

    def cpu_int8_attention(q, k, v, scale: float, heads: int):
        out = lsgq_attn(bsd(q), bsd(k), bsd(v), num_heads=heads, scale=scale)
        return op.Transpose(op.Reshape(out, op.Constant(value_ints=[0, 0, heads, -1])), perm=[0, 2, 1, 3])

    def rms_norm(x, normalized_shape: Sequence[int], weight=None, eps: float | None = None):
        # the pattern onnxruntime fuses into SimplifiedLayerNormalization (x / sqrt(mean(x^2) + eps))
        axes = op.Constant(value_ints=list(range(-len(normalized_shape), 0)))
        ms = op.ReduceMean(op.Pow(x, op.Constant(value_float=2.0)), axes, keepdims=1)
        y = op.Div(x, op.Sqrt(op.Add(ms, op.Constant(value_float=float(torch.finfo(torch.float32).eps) if eps is None else eps))))
        return y if weight is None else op.Mul(y, weight)

    ops = torch.ops.lsgq_onnx
    return {ops.attention.default: attention, torch.ops.aten.rms_norm.default: rms_norm,
            ops.int8_tensor_attention.default: int8_attention, ops.cpu_int8_attention.default: cpu_int8_attention,
            ops.int8_dynamic_linear.default: int8_dynamic, ops.int8_token_linear.default: int8_token,
            ops.int8_static_linear.default: int8_static, ops.dq_linear.default: dq}


# ----------------------------------------------------------------------------- cores
def _bias(layer: QuantLinear) -> torch.Tensor:
    return layer.bias.detach().float().clone() if layer.bias is not None else torch.zeros(layer.out_features)


def _int8_rows(layer: QuantLinear) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: ``(w_q (K, N) int8, w_scale (N,))``."""
    q, scale, _ = quantize_to_int(layer.weight.detach().float(), 8, True, "row")
    return q.t().contiguous(), scale.reshape(-1)


class TokenInt8Core(nn.Module):
    """The plan's per-token activations and per-row weight codes on ``MatMulInteger``."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        s, w = layer.spec, layer.weight.detach().float()
        if s.weight_bits:
            q, scale, zero = quantize_to_int(w, s.weight_bits, s.weight_symmetric, "row")
            shift = 0 if s.weight_symmetric else 128  # asymmetric codes [0, 2^b - 1] -> int8
            w8, wz = q.to(torch.int16) - shift, zero.reshape(-1) - shift
        else:
            raise ValueError(f"{s.module_path}: TokenInt8Core needs quantized weights")
        self.register_buffer("w8", w8.to(torch.int8).t().contiguous())
        self.register_buffer("w_zero", wz.to(torch.int8))
        self.register_buffer("w_colsum", (w8.float() - wz[:, None]).sum(1))
        self.register_buffer("w_scale", scale.reshape(-1).float())
        self.register_buffer("bias", _bias(layer))
        self.act_symmetric = bool(s.act_symmetric)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_token_linear(x, self.w8, self.w_zero, self.w_colsum, self.w_scale, self.bias, self.act_symmetric)


class DynamicInt8Core(nn.Module):
    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        w_q, w_scale = _int8_rows(layer)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", _bias(layer))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_dynamic_linear(x, self.w_q, self.w_scale, self.bias)


class StaticInt8Core(nn.Module):
    """Static QDQ; scales come from :meth:`observe` then :meth:`finalize` (calibration)."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        w_q, w_scale = _int8_rows(layer)
        self.register_buffer("w_q", w_q)
        self.register_buffer("w_scale", w_scale)
        self.register_buffer("bias", _bias(layer))
        for name in ("x_scale", "y_scale"):
            self.register_buffer(name, torch.ones(()))
        for name in ("x_zero", "y_zero"):
            self.register_buffer(name, torch.zeros((), dtype=torch.uint8))
        self.register_buffer("bias_q", torch.zeros(layer.out_features, dtype=torch.int32))
        self.register_buffer("bias_scale", torch.ones(layer.out_features))
        self.register_buffer("w_zero", torch.zeros(layer.out_features, dtype=torch.int8))
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
            y = x @ (self.w_q.float() * self.w_scale) + self.bias
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


# ----------------------------------------------------------------------------- lowering
def _info(kernel: str, real: bool, note: str) -> dict[str, Any]:
    return {"backend": "onnxruntime", "kernel": kernel, "real_kernel": real, "note": note}


def _w4_block(layer: QuantLinear, w4_block: int | None) -> int | None:
    """``None`` (keep the plan's codes) unless the plan's block cannot fuse and ``w4_block`` divides K."""
    s = layer.spec
    plan_block = s.group_size if s.weight_granularity == "group" else layer.in_features
    if w4_block is None or nbits_fusable(4, plan_block) or layer.in_features % w4_block:
        return None
    return w4_block


def lower_onnx(qm: QuantizedModel, act: str = "tensor", w4_block: int | None = 128,
               calib_data: Iterable[Any] | None = None, example_inputs: Any = None,
               attention_kernel: str = "ort") -> QuantizedModel:
    """A copy of ``qm`` with every linear in its ONNX-export form (a torch model with the
    exported graph's semantics: run it to check ORT parity, or pass it to :func:`export_onnx`).

    Args:
        act: 8-bit activations ``"tensor"`` (per tensor, per call), ``"token"`` (the plan's
            per-token quantizer, exact but slower) or ``"static"`` (per tensor, from calibration on
            ``calib_data``, or on ``example_inputs`` with a warning).
        w4_block: block size for 4-bit weights (with 8- or 16-bit activations) whose plan
            block ORT cannot fuse (per-row weights with K not a power of two); None keeps them.
        attention_kernel: for the plan's 8-bit attention layers: ``"ort"`` (onnxruntime's
            own ops: ``DynamicQuantizeLinear`` + ``MatMulIntegerToFloat`` for ``Q K^T``, per
            tensor) or ``"lsgq"`` (lsgq's fused custom op ``com.lsgq::Int8Attention``, an
            AVX-512 VNNI kernel; sessions from :func:`ort_session` register it).
    """
    if attention_kernel not in ATTENTION_KERNELS:
        raise user_error(f"attention_kernel={attention_kernel!r} is not an ONNX attention kernel",
                         f"use one of {ATTENTION_KERNELS}")
    if act not in ACT_MODES:
        raise user_error(f"act={act!r} is not an ONNX activation mode", f"use one of {ACT_MODES}")

    def make_core(layer: QuantLinear):
        s = layer.spec
        if not s.quantized:
            return None, full_precision_info("onnxruntime", "MatMul/Gemm (float)")
        w, a, mode = s.weight_bits, s.act_bits, s.act_quantizer
        plain_act = mode in ("dynamic", "static") and s.act_granularity in ("token", "tensor")
        if (w == 8 and a == 8 and act == "token" and mode == "dynamic" and s.act_granularity == "token"
                and s.weight_granularity == "row"):
            return TokenInt8Core(layer), _info("MatMulInteger (uint8 x int8, per-token codes)", True,
                                               "the plan's quantizers exactly: per-token activations, per-row weights")
        if w == 8 and a == 8 and plain_act:
            note = "activations uint8 per tensor" + (" (plan: per token)" if s.act_granularity == "token" else "")
            note += "; weights int8 symmetric per channel"
            if act in ("token", "tensor"):
                return DynamicInt8Core(layer), _info("DynamicQuantizeLinear + MatMulInteger (DynamicQuantizeMatMul)",
                                                     True, note)
            return StaticInt8Core(layer), _info("QDQ -> QGemm", True, note + "; static ranges, output requantized")
        if w is not None and (a is None or (w == 4 and a == 8 and plain_act)):
            block = _w4_block(layer, w4_block) if w == 4 else None
            core = DQCore(layer, block, act_quant=False)
            fused = nbits_fusable(w, core.block)
            note = ("" if block is None else f"requantized in blocks of {block} for MatMulNBits; ") + (
                "activations int8 per block inside MatMulNBits (ORT accuracy_level 4)" if a and fused else
                "activations kept in float (no A8 x W4 kernel without MatMulNBits)" if a else "")
            cb = container_bits(w)
            kernel = f"MatMulNBits (uint{cb} weights)" if fused else f"DequantizeLinear(uint{cb}) + MatMul (float)"
            return core, _info(kernel, fused, note)
        if w is None:
            return None, _info("fake-quant activations (float ops) + MatMul", False, "simulated")
        core = DQCore(layer, None, act_quant=True)
        fused = nbits_fusable(w, core.block)
        kernel = ("fake-quant activations (float ops) + " +
                  ("MatMulNBits" if fused else f"DequantizeLinear(uint{container_bits(w)}) + MatMul"))
        return core, _info(kernel, False, f"no {s.fmt} integer kernel in onnxruntime: simulated, "
                                          "semantics of the torch fake-quant model")

    out = lower_layers(qm, make_core, f"onnx ({act})")
    _lower_attention(out, attention_kernel)
    if act == "static":
        _calibrate_static(out, calib_data, example_inputs)
    return out


ATTENTION_KERNELS = ("ort", "lsgq")
ATTENTION_KERNEL = "DynamicQuantizeLinear x2 + MatMulIntegerToFloat (uint8 Q.K^T per tensor), float P.V"
LSGQ_ATTENTION_KERNEL = "com.lsgq::Int8Attention (lsgq custom op: INT8 Q.K^T on AVX-512 VNNI, fp32 P.V, fused)"


def _lower_attention(lowered: QuantizedModel, kernel: str = "ort") -> int:
    """Swap ``lsgq::int8_attention`` (per-block int8, the CUDA kernel's numerics) for its ONNX
    form in ``lowered`` (a copy made by :func:`lower_layers`): ``kernel="ort"``:
    ``lsgq_onnx::int8_tensor_attention`` (per-tensor uint8, what ORT fuses into one integer op);
    ``"lsgq"``: ``lsgq_onnx::cpu_int8_attention`` (lsgq's custom op). Returns the number swapped."""
    import lsgq_compiler.kernels.attention  # noqa: F401  (registers lsgq::int8_attention)

    target = torch.ops.lsgq.int8_attention.default
    g = lowered.gm.graph
    count = 0
    for n in list(g.nodes):
        if n.op != "call_function" or n.target is not target:
            continue
        q, k, v, scale = n.args[:4]
        smooth = n.args[4] if len(n.args) > 4 else n.kwargs.get("smooth_k", True)
        qv = q.meta.get("val") if isinstance(q, fx.Node) else None
        with g.inserting_before(n):
            if kernel == "lsgq":
                if qv is None or qv.ndim != 4 or qv.shape[-1] % 4 or qv.shape[-1] > 128:
                    raise user_error(f"attention node {n.name} has no 4-D shape with head dim <= 128 (multiple of 4)",
                                     "export with attention_kernel='ort'")
                new = g.call_function(torch.ops.lsgq_onnx.cpu_int8_attention.default,
                                      (q, k, v, float(scale), int(qv.shape[1])))
            else:
                new = g.call_function(torch.ops.lsgq_onnx.int8_tensor_attention.default,
                                      (q, k, v, float(scale), bool(smooth)))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
        count += 1
    if count:
        lowered.gm.recompile()
        note = ("plan: int8 per block of tokens; per tensor in ONNX" if kernel == "ort" else
                "plan: int8 per block of tokens; the custom op: Q per row, K per 64 keys")
        for rec in lowered.plan.attention.values():
            if rec.get("quantized"):
                rec.update(kernel=ATTENTION_KERNEL if kernel == "ort" else LSGQ_ATTENTION_KERNEL,
                           backend="onnxruntime", real_kernel=True, note=note)
    return count


def _calibrate_static(lowered: QuantizedModel, calib_data, example_inputs) -> None:
    from lsgq_compiler.calibration import WeakCalibrationWarning, run_batches

    cores = [m for m in lowered.modules() if isinstance(m, StaticInt8Core)]
    if not cores:
        return
    if calib_data is None:
        if example_inputs is None:
            raise user_error("act='static' needs calibration inputs", "pass calib_data=[inputs, ...] (or example_inputs)")
        warnings.warn("static ONNX activation ranges calibrated on the example inputs only, which is weak; "
                      "pass calib_data", WeakCalibrationWarning, stacklevel=3)
        calib_data = [example_inputs]
    batches = [normalize_inputs(b, f"calib_data[{i}]") for i, b in enumerate(calib_data)]
    for c in cores:
        c.observe()
    run_batches(lowered, batches, "calibrating ONNX ranges", progress=False)
    for c in cores:
        c.finalize()


# ----------------------------------------------------------------------------- export
class _Forward(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)


def export_graph(gm: fx.GraphModule, contrib_ops: bool = True) -> fx.GraphModule:
    """A GraphModule sharing ``gm``'s modules and weights whose graph (a copy) has the export
    rewrites applied: :class:`~lsgq_compiler.passes.interleave.InterleaveToStack` (interleaved
    RoPE writes without ScatterND) and, with ``contrib_ops``, full-precision SDPA as onnxruntime's
    ``com.microsoft.MultiHeadAttention``. ``gm`` is not modified."""
    from lsgq_compiler.passes.interleave import InterleaveToStack

    out = fx.GraphModule(gm, copy.deepcopy(gm.graph))
    InterleaveToStack()(out)
    if contrib_ops:
        _sdpa_to_mha(out)
    return out


def _sdpa_to_mha(gm: fx.GraphModule) -> int:
    """Full-precision SDPA nodes (no mask, dropout, causal flag or GQA; 4-D) -> ``lsgq_onnx::attention``
    (exported as ``com.microsoft.MultiHeadAttention``). Returns the number replaced."""
    sdpa = torch.ops.aten.scaled_dot_product_attention.default
    count = 0
    for n in list(gm.graph.nodes):
        if n.op != "call_function" or n.target != sdpa or len(n.args) > 3:
            continue
        kw = dict(n.kwargs)
        qv = n.args[0].meta.get("val") if isinstance(n.args[0], fx.Node) else None
        if (qv is None or qv.ndim != 4 or kw.get("attn_mask") is not None or kw.get("dropout_p", 0.0)
                or kw.get("is_causal", False) or kw.get("enable_gqa", False)):
            continue
        scale = kw.get("scale") or float(qv.shape[-1]) ** -0.5
        with gm.graph.inserting_before(n):
            new = gm.graph.call_function(torch.ops.lsgq_onnx.attention.default,
                                         (*n.args[:3], float(scale), int(qv.shape[1])))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        gm.graph.erase_node(n)
        count += 1
    if count:
        gm.recompile()
    return count


def _export(gm: fx.GraphModule, path: Path, example_inputs: Any, opset: int, table: dict | None,
            contrib_ops: bool = True) -> Path:
    import onnx

    args, kwargs = normalize_inputs(example_inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_Forward(export_graph(gm, contrib_ops)), args, kwargs=kwargs, dynamo=True, opset_version=opset,
                                 custom_translation_table=table, verbose=False)
    proto = fold_lowbit_casts(prog.model_proto)
    for n in proto.graph.node:  # the exporter's per-node stack traces: text larger than a small model
        del n.metadata_props[:]
        n.doc_string = ""
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # written under a temporary name, then renamed: no half-written model at `path`
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def fold_lowbit_casts(proto):
    """Replace ``Cast(initializer, to=UINT4/INT4)`` by a packed 4-bit initializer (halves the file)."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    types = {TensorProto.UINT4: ml_dtypes.uint4, TensorProto.INT4: ml_dtypes.int4}
    consumers: dict[str, int] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    keep = []
    for n in proto.graph.node:
        to = next((a.i for a in n.attribute if a.name == "to"), None)
        if n.op_type == "Cast" and to in types and n.input[0] in inits:
            arr = numpy_helper.to_array(inits[n.input[0]])
            proto.graph.initializer.append(numpy_helper.from_array(arr.astype(types[to]), n.output[0]))
            consumers[n.input[0]] -= 1
            continue
        keep.append(n)
    if len(keep) != len(proto.graph.node):
        del proto.graph.node[:]
        proto.graph.node.extend(keep)
        unused = [t for t in proto.graph.initializer if consumers.get(t.name, 1) == 0]
        for t in unused:
            proto.graph.initializer.remove(t)
    return proto


def export_onnx(qm: QuantizedModel, path: str | Path, example_inputs: Any, *, act: str = "tensor",
                w4_block: int | None = 128, calib_data: Iterable[Any] | None = None, opset: int = OPSET,
                check: bool = True, contrib_ops: bool = True, attention_kernel: str = "ort") -> Path:
    """Write ``qm`` as an ONNX model whose quantized linears onnxruntime runs on integer kernels.

    Args:
        qm: a QuantizedModel from :func:`~lsgq_compiler.compile_quantized` (not modified).
        path: the ``.onnx`` file to write.
        example_inputs: inputs shaped as at compile time (tuple, dict or tensor).
        act: 8-bit activation quantization: ``"tensor"`` (per tensor, per call:
            ``DynamicQuantizeMatMul``), ``"token"`` (the plan's per-token quantizer on
            ``MatMulInteger``: the torch model's numbers, slower) or ``"static"`` (calibrated per
            tensor: ``QGemm``).
        w4_block: block size for 4-bit weights whose plan block ORT cannot fuse into MatMulNBits.
        calib_data: calibration batches for ``act="static"``.
        opset: ONNX opset (>= 21: blocked 4-bit DequantizeLinear).
        check: run ``onnx.checker`` (full check) on the result.
        contrib_ops: export full-precision attention as onnxruntime's fused
            ``com.microsoft.MultiHeadAttention`` (default); False keeps standard ONNX ops only,
            for other runtimes.
        attention_kernel: the plan's 8-bit attention as onnxruntime's own integer ops
            (``"ort"``) or as lsgq's fused custom op ``com.lsgq::Int8Attention`` (``"lsgq"``;
            run it in a session from :func:`ort_session`, which registers the op library).

    Returns:
        The path written. ``lower_onnx(qm, ...)`` gives the torch model with the same semantics.

    Example:
        >>> export_onnx(qm, "model.onnx", inputs)
        >>> sess = ort_session("model.onnx")
    """
    if opset < 21:
        raise user_error(f"opset {opset} has no blocked 4-bit DequantizeLinear", "use opset >= 21")
    lowered = lower_onnx(qm, act=act, w4_block=w4_block, calib_data=calib_data, example_inputs=example_inputs,
                         attention_kernel=attention_kernel)
    return export_lowered(lowered, path, example_inputs, opset, check, contrib_ops)


def export_lowered(lowered: QuantizedModel, path: str | Path, example_inputs: Any, opset: int = OPSET,
                   check: bool = True, contrib_ops: bool = True) -> Path:
    """Write a model from :func:`lower_onnx` as ONNX (see :func:`export_onnx`)."""
    out = _export(lowered.gm, Path(path), example_inputs, opset, _translations(), contrib_ops)
    if check:
        import onnx

        onnx.checker.check_model(str(out), full_check=True)
    return out


def export_float_onnx(model: nn.Module, path: str | Path, example_inputs: Any, opset: int = OPSET,
                      contrib_ops: bool = True) -> Path:
    """The full-precision model as ONNX (the baseline for ORT FP32 and ``onnxruntime.quantization``),
    through the same export rewrites as :func:`export_onnx`."""
    from lsgq_compiler.capture import capture

    return _export(capture(model, example_inputs).gm, Path(path), example_inputs, opset, _translations(),
                   contrib_ops)


# ----------------------------------------------------------------------------- onnxruntime helpers
def ort_session(path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None,
                accuracy_level: int | None = None, spinning: bool | None = None):
    """An onnxruntime CPU session; ``optimized_path`` saves the graph after ORT's fusions.

    A model that uses lsgq's custom op (``com.lsgq`` domain) gets the op library registered; the
    op runs on ``threads`` threads (default: one per core). ``spinning``: whether ORT's idle
    intra-op threads busy-wait for the next op (ORT's default). None: ORT's default, except for
    models with lsgq ops, where it is off: the op runs its own threads, and ORT's spinning
    workers would take the cores from them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    lsgq_ops = uses_lsgq_ops(path)
    if lsgq_ops:
        from lsgq_compiler.kernels.cpu_attention import ort_library

        so.register_custom_ops_library(ort_library())
        if threads:
            os.environ["LSGQ_ATTENTION_THREADS"] = str(threads)
    if spinning is None:
        spinning = not lsgq_ops
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if accuracy_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def uses_lsgq_ops(path: str | Path) -> bool:
    """True when the ONNX model at ``path`` imports the ``com.lsgq`` domain (lsgq's custom ops)."""
    import onnx

    from lsgq_compiler.kernels.cpu_attention import ORT_DOMAIN

    model = onnx.load(str(path), load_external_data=False)
    return any(o.domain == ORT_DOMAIN for o in model.opset_import)


def ort_feed(sess, example_inputs: Any) -> dict[str, np.ndarray]:
    """Map inputs (tuple, dict or tensor) to the session's input names (unused ones are dropped)."""
    args, kwargs = normalize_inputs(example_inputs)
    named = {f"args_{i}": a for i, a in enumerate(args)} | dict(kwargs)
    positional = [a for a in args]
    feed = {}
    for i, inp in enumerate(sess.get_inputs()):
        t = named.get(inp.name, positional[i] if i < len(positional) else None)
        if t is None:
            raise user_error(f"no value for ONNX input {inp.name!r}", f"pass inputs named {[x.name for x in sess.get_inputs()]}")
        feed[inp.name] = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return feed


def op_counts(path: str | Path) -> dict[str, int]:
    """``op_type -> count`` of an ONNX file (e.g. the ORT-optimised graph)."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


# ----------------------------------------------------------------------------- CLI
def add_export_onnx_parser(subparsers) -> argparse.ArgumentParser:
    """``lsgq export-onnx``: quantize the shipped model (or load an artifact) and write ONNX."""
    p = subparsers.add_parser("export-onnx", help="export a quantized model to ONNX (onnxruntime integer kernels)")
    p.add_argument("--out", default="model.onnx", help="ONNX file to write (default: model.onnx)")
    p.add_argument("--artifact", default=None, help="a folder written by save_quantized (else: compile now)")
    p.add_argument("--recipe", default="minmax")
    p.add_argument("--bits", default="8", help="weight bits, or W/A as '4/8' (default 8 = W8A8)")
    p.add_argument("--act", choices=ACT_MODES, default="tensor",
                   help="8-bit activations: per-tensor dynamic (default, fastest), the plan's per-token "
                        "quantizer (exact, slower), or per-tensor static from calibration")
    p.add_argument("--w4-block", type=int, default=128)
    p.add_argument("--standard-ops", action="store_true",
                   help="standard ONNX ops only (no com.microsoft.MultiHeadAttention): for runtimes other than "
                        "onnxruntime")
    p.add_argument("--attention-bits", type=int, choices=(8,), default=None,
                   help="8-bit attention where the plan's measurement allows it (default: float attention)")
    p.add_argument("--attention-kernel", choices=ATTENTION_KERNELS, default="ort",
                   help="8-bit attention as onnxruntime's own integer ops (ort) or lsgq's fused AVX-512 VNNI "
                        "custom op com.lsgq::Int8Attention (lsgq; ort_session registers it)")
    p.add_argument("--frames", type=int, default=8, help="LQ clip frames (default 8)")
    p.add_argument("--size", type=int, default=32, help="LQ clip height = width (default 32: 128x128 output)")
    p.add_argument("--weights", default=None, help="TinyVSR weights (default: the shipped ones)")
    p.set_defaults(fn=_cmd_export_onnx)
    return p


def _cmd_export_onnx(args: argparse.Namespace) -> int:
    from lsgq_compiler import QuantConfig, compile_quantized
    from lsgq_compiler.models import load_tiny_vsr

    vsr = load_tiny_vsr(args.weights)
    g = torch.Generator().manual_seed(0)
    lq = torch.rand(1, 3, args.frames, args.size, args.size, generator=g)
    inputs = vsr.transformer_inputs(lq)
    if args.artifact:
        from .artifacts import load_quantized

        qm = load_quantized(args.artifact, vsr.transformer, inputs)
    else:
        wb, _, ab = args.bits.partition("/")
        qm = compile_quantized(vsr.transformer, inputs, QuantConfig(recipe=args.recipe, weight_bits=int(wb),
                                                                    act_bits=int(ab or wb),
                                                                    attention_bits=args.attention_bits),
                               calib_data=[inputs], progress=False)
    calib = [vsr.transformer_inputs(torch.rand(lq.shape, generator=g)) for _ in range(2)]
    lowered = lower_onnx(qm, args.act, args.w4_block, calib, inputs, attention_kernel=args.attention_kernel)
    path = export_lowered(lowered, args.out, inputs, contrib_ops=not args.standard_ops)
    opt = Path(args.out).with_suffix(".ort-optimized.onnx")
    ort_session(path, optimized_path=opt)
    ints = {k: v for k, v in op_counts(opt).items() if k in INTEGER_OPS}
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB); onnxruntime integer kernels: {ints or 'none'}")
    for r in lowered.report():
        if r.get("real_kernel") is not None:
            print(f"  {r['layer']:<40} {r['format']:<6} {r['kernel']}  real={r['real_kernel']}")
    return 0
