"""Fused Triton kernels for 8-bit attention (CUDA).

Shape notation: ``q, k, v: (B, H, N, D)``, ``D`` in {64, 128}.

1. ``_quant_blocks``: one pass over Q (or K): subtract K's token mean (K smoothing), fold
   the softmax scale (in the exp2 domain) into Q, and write int8 codes with one float32
   scale per block of tokens.
2. ``_int8_attn_fwd``: flash-attention forward with INT8 ``Q K^T`` (int32 accumulate,
   rescaled by the two block scales), online softmax in fp32 with exp2, and ``P V`` in
   fp16 (``pv="fp16"``), bf16 or FP8 e4m3 with a per-channel V scale (``pv="fp8"``,
   SageAttention2's choice), fp32 accumulation.

At head dim 64 the MMAs are cheap and the per-score scalar work decides the speed. With
``magic=True`` the int32 scores become fp32 without I2F conversions (which issue at the
special-function rate, like ``ex2``): the MMA accumulates onto the bit pattern of 1.5 * 2^23,
so the int32 result read as fp32 is exactly ``1.5 * 2^23 + s``, and scale, offset and row max
fold into one FMA per score. Measured on an H200 (bench/attention_kernel.py): 9.3 -> 8.3 ms at
DOVE's shape, same output bits up to fp rounding.
"""
from __future__ import annotations

import math

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None
    tl = None

LOG2E = 1.4426950408889634
DEFAULT_BM, DEFAULT_BN = 128, 64


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _quant_blocks(X, MEAN, QX, S, N, NB, sxb, sxh, sxn, H: tl.constexpr, D: tl.constexpr,
                      BLOCK: tl.constexpr, MUL: tl.constexpr, HAS_MEAN: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        rows = pid_n * BLOCK + tl.arange(0, BLOCK)
        cols = tl.arange(0, D)
        mask = rows[:, None] < N
        x = tl.load(X + b * sxb + h * sxh + rows[:, None] * sxn + cols[None, :], mask=mask, other=0.0).to(tl.float32)
        if HAS_MEAN:
            x = x - tl.load(MEAN + pid_bh * D + cols)[None, :]
            x = tl.where(mask, x, 0.0)
        x = x * MUL
        scale = tl.maximum(tl.max(tl.max(tl.abs(x), 1), 0), 1e-8) / 127.0
        q = x / scale
        q = tl.where(q >= 0, q + 0.5, q - 0.5).to(tl.int8)  # round half away from zero
        tl.store(QX + pid_bh * N * D + rows[:, None] * D + cols[None, :], q, mask=mask)
        tl.store(S + pid_bh * NB + pid_n, scale)

    @triton.jit
    def _exp2(x, EXP: tl.constexpr):
        """``2^x`` (x <= 0) in 16 bits, two results per special-function op: EXP=1 packed
        ``ex2.approx.f16x2``, EXP=2 packed ``ex2.approx.ftz.bf16x2`` (sm_90)."""
        if EXP == 1:
            return tl.inline_asm_elementwise("ex2.approx.f16x2 $0, $1;", "=r,r", [x.to(tl.float16)],
                                             dtype=tl.float16, is_pure=True, pack=2)
        elif EXP == 2:
            return tl.inline_asm_elementwise("ex2.approx.ftz.bf16x2 $0, $1;", "=r,r", [x.to(tl.bfloat16)],
                                             dtype=tl.bfloat16, is_pure=True, pack=2)
        else:
            return tl.math.exp2(x).to(tl.float16)

    @triton.jit
    def _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn,
                    offs_n, offs_d, D: tl.constexpr, BN: tl.constexpr, PV_FP8: tl.constexpr, MASK: tl.constexpr,
                    EXP: tl.constexpr, MAGIC: tl.constexpr):
        cols = start + offs_n
        if MASK:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < N, other=0)
        else:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :])
        k_scale = tl.load(ks_ptr + start // BN)
        c = q_scale * k_scale
        if MAGIC:
            # int32 -> fp32 without the 16/clk/SM I2F: accumulate onto the bits of 1.5 * 2^23, so the
            # int32 result read as fp32 is exactly 1.5 * 2^23 + s (|s| <= 64 * 127^2 < 2^22)
            acc_i = tl.dot(q, tl.trans(k), acc=tl.full((q.shape[0], BN), 0x4B400000, tl.int32), out_dtype=tl.int32)
            f = acc_i.to(tl.float32, bitcast=True)
            if MASK:
                f = tl.where(cols[None, :] < N, f, 0.0)
            m_new = tl.maximum(m_i, (tl.max(f, 1) - 12582912.0) * c)
            x = f * c - (12582912.0 * c + m_new)[:, None]  # one FMA per score
        else:
            sc = tl.dot(q, tl.trans(k)).to(tl.float32) * c
            if MASK:
                sc = tl.where(cols[None, :] < N, sc, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(sc, 1))
            x = sc - m_new[:, None]
        if MASK:
            x = tl.where(cols[None, :] < N, x, float("-inf"))
        alpha = tl.math.exp2(m_i - m_new)
        if PV_FP8:  # V stored transposed (D, N): K-major operand for the fp8 MMA
            p = tl.math.exp2(x)
            l_i = l_i * alpha + tl.sum(p, 1)
            if MASK:
                vt = tl.load(v_base + offs_d[:, None] * svn + cols[None, :], mask=cols[None, :] < N, other=0.0)
            else:
                vt = tl.load(v_base + offs_d[:, None] * svn + cols[None, :])
            acc = acc * alpha[:, None] + tl.dot((p * 256.0).to(tl.float8e4nv), tl.trans(vt))  # 2^8: off subnormals
        else:
            if MASK:
                v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
            else:
                v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :])
            if EXP == 0:
                p32 = tl.math.exp2(x)
                l_i = l_i * alpha + tl.sum(p32, 1)
                p = p32.to(v.dtype)  # fp16 or bf16: V's dtype
            else:
                p = _exp2(x, EXP)  # fp16 (EXP 1) or bf16 (EXP 2): V's dtype
                l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
            acc = acc * alpha[:, None] + tl.dot(p, v)
        return acc, l_i, m_new

    @triton.jit
    def _int8_attn_fwd(Q, K, V, QS, KS, VS, O, NQ, N, NBQ, NBK, svb, svh, svn, sob, soh, son,
                       H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       PV_FP8: tl.constexpr, EXP: tl.constexpr, MAGIC: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + pid_bh * NQ * D + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < NQ, other=0)
        q_scale = tl.load(QS + pid_bh * NBQ + pid_m)
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        l_i = tl.zeros((BM,), tl.float32)
        acc = tl.zeros((BM, D), tl.float32)
        k_base = K + pid_bh * N * D
        v_base = V + b * svb + h * svh
        ks_ptr = KS + pid_bh * NBK
        n_full = (N // BN) * BN
        for start in range(0, n_full, BN):  # full blocks: no masks
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn,
                                        offs_n, offs_d, D, BN, PV_FP8, False, EXP, MAGIC)
        if n_full < N:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, n_full, N, svn,
                                        offs_n, offs_d, D, BN, PV_FP8, True, EXP, MAGIC)
        out = acc / l_i[:, None]
        if PV_FP8:
            out = out * (tl.load(VS + pid_bh * D + offs_d)[None, :] / 256.0)
        tl.store(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < NQ)


def quantize_qk(x: torch.Tensor, block: int, mul: float, smooth: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``x: (B, H, N, D)`` -> int8 ``(B*H, N, D)`` codes and ``(B*H, ceil(N/block))`` scales, one pass."""
    b, h, n, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    nb = triton.cdiv(n, block)
    mean = (x.mean(dim=-2, dtype=torch.float32).reshape(b * h, d).contiguous() if smooth
            else x.new_empty(1, dtype=torch.float32))
    q = torch.empty(b * h, n, d, dtype=torch.int8, device=x.device)
    s = torch.empty(b * h, nb, dtype=torch.float32, device=x.device)
    _quant_blocks[(nb, b * h)](x, mean, q, s, n, nb, x.stride(0), x.stride(1), x.stride(2), H=h, D=d, BLOCK=block,
                               MUL=mul, HAS_MEAN=smooth, num_warps=4)
    return q, s


def triton_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, smooth_k: bool = True,
                          pv: str = "fp16", bm: int = DEFAULT_BM, bn: int = DEFAULT_BN, num_warps: int = 8,
                          num_stages: int = 3, exp: str = "f32", magic: bool = False) -> torch.Tensor:
    """``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)`` CUDA tensors -> ``(B, H, Nq, D)`` in q's dtype.

    ``pv``: ``"fp16"`` (P and V in fp16), ``"bf16"`` (P in bf16, V read in place when bf16: no copy) or
    ``"fp8"``. ``exp``: ``"f32"`` (fp32 ``ex2``, then P rounded to 16 bits) or ``"x2"`` (packed 16-bit
    ``ex2``: half the special-function work; P's precision is unchanged, its exponent argument is
    rounded to 16 bits). ``magic``: int32 scores to fp32 through the 1.5 * 2^23 bit trick instead of
    I2F conversions (exact). bench/attention_kernel.py measures each choice; CUDA_SETTINGS in
    :mod:`lsgq_compiler.kernels.attention` holds the fastest.
    """
    b, h, nq, d = q.shape
    n = k.shape[-2]
    magic = magic and d * 127 * 127 < 2 ** 22  # the bit trick needs |s| < 2^22 (head dim <= 260)
    qq, qs = quantize_qk(q, bm, scale * LOG2E, False)  # exp2-domain softmax
    kq, ks = quantize_qk(k, bn, 1.0, smooth_k)
    if pv == "fp8":
        vs = v.float().abs().amax(dim=-2).clamp_min(1e-8) / 448.0  # (B, H, D) per-channel
        v8 = (v.float() / vs[:, :, None, :]).to(torch.float8_e4m3fn).transpose(-1, -2).reshape(b * h, d, n)
        v8 = v8.contiguous()  # (B*H, D, N)
        vs = vs.reshape(b * h, d).contiguous()
        svb, svh, svn = h * v8.stride(0), v8.stride(0), v8.stride(1)
    else:  # (B, H, N, D), read in place when it already has P's dtype (bf16 models with pv="bf16": no copy)
        vdt = torch.bfloat16 if pv == "bf16" else torch.float16
        v8 = v if v.dtype == vdt and v.stride(-1) == 1 else v.to(vdt).contiguous()
        vs = qs  # unused
        svb, svh, svn = v8.stride(0), v8.stride(1), v8.stride(2)
    out = torch.empty_like(q)
    grid = (triton.cdiv(nq, bm), b * h)
    exp_mode = 0 if exp == "f32" else 2 if pv == "bf16" else 1
    _int8_attn_fwd[grid](qq, kq, v8, qs, ks, vs, out, nq, n, qs.shape[1], ks.shape[1], svb, svh, svn,
                         out.stride(0), out.stride(1), out.stride(2),
                         H=h, D=d, BM=bm, BN=bn, PV_FP8=pv == "fp8", EXP=exp_mode, MAGIC=magic,
                         num_warps=num_warps, num_stages=num_stages)
    return out
