"""Torch custom ops (``lsgq_onnx::*``) with reference implementations, and their ONNX translations
(``custom_translation_table`` of ``torch.onnx.export(dynamo=True)``)."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch



@torch.library.custom_op("lsgq_onnx::int8_dynamic_linear", mutates_args=())
def int8_dynamic_linear(x: torch.Tensor, w_q: torch.Tensor, w_zero: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor) -> torch.Tensor:
    """``DynamicQuantizeLinear(x) -> MatMulInteger(., w_q, z_x, w_zero) * s_x s_w + bias``; ``w_q: (K, N)`` uint8
    (symmetric int8 codes + ``w_zero`` = 128, a scalar: uint8 x uint8, exact on every x86 kernel)."""
    xq, s, z = _dynamic_codes(x)
    return ((xq - z) @ (w_q.float() - w_zero.float())) * (s * w_scale) + bias


@int8_dynamic_linear.register_fake
def _(x, w_q, w_zero, w_scale, bias):
    return x.new_empty(*x.shape[:-1], w_q.shape[1])


@torch.library.custom_op("lsgq_onnx::int8_token_linear", mutates_args=())
def int8_token_linear(x: torch.Tensor, w8: torch.Tensor, w_zero: torch.Tensor, w_colsum: torch.Tensor,
                      w_scale: torch.Tensor, bias: torch.Tensor, act_symmetric: bool) -> torch.Tensor:
    """Per-token dynamic 8-bit activations (the fake quantizer's formula), 8-bit weight codes.

    ``w8: (K, N)`` uint8 with per-column zero point ``w_zero: (N,)`` uint8 (the plan's codes, shifted by
    +128 when symmetric), ``w_colsum[n] = sum_k (w8 - w_zero)[k, n]``. With ``u`` the uint8
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
    """QDQ linear, uint8 per-tensor input/output (static), 8-bit per-channel ``w_q: (K, N)`` uint8 with zero
    points ``w_zero (N,)`` (symmetric codes + 128), int32 bias.

    ORT fuses the pattern into QGemm only with constant scales and explicit zero points, hence
    ``bias_scale = x_scale * w_scale`` and ``w_zero`` (128) / ``bias_zero`` (0) as inputs."""
    xz, yz = x_zero.float(), y_zero.float()
    xq = torch.clamp(torch.round(x / x_scale) + xz, 0, 255)
    y = ((xq - xz) @ (w_q.float() - w_zero.float()) + bias_q.float()) * bias_scale
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

    def int8_dynamic(x, w_q, w_zero, w_scale, bias):
        xq, s, z = op.DynamicQuantizeLinear(x)
        acc = op.Cast(op.MatMulInteger(xq, w_q, z, w_zero), to=TensorProto.FLOAT)
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
