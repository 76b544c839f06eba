"""Fused Triton kernels for 8-bit attention (CUDA).

Shape notation: ``q, k, v: (B, H, N, D)``, ``D`` in {64, 128}.

1. ``_quant_blocks``: one pass over Q (or K): subtract K's token mean (K smoothing), fold
   the softmax scale (in the exp2 domain) into Q, and write int8 codes with one float32
   scale per block of tokens.
2. ``_int8_attn_fwd``: flash-attention forward with INT8 ``Q K^T`` (int32 accumulate,
   rescaled by the two block scales), online softmax in fp32 with exp2, and ``P V`` in
   fp16 (``pv="fp16"``) or FP8 e4m3 with a per-channel V scale (``pv="fp8"``, SageAttention2's
   choice), fp32 accumulation.
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
    def _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn,
                    offs_n, offs_d, D: tl.constexpr, BN: tl.constexpr, PV_FP8: tl.constexpr, MASK: tl.constexpr):
        cols = start + offs_n
        if MASK:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < N, other=0)
        else:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :])
        k_scale = tl.load(ks_ptr + start // BN)
        s = tl.dot(q, tl.trans(k)).to(tl.float32) * (q_scale * k_scale)
        if MASK:
            s = tl.where(cols[None, :] < N, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        if PV_FP8:  # V stored transposed (D, N): K-major operand for the fp8 MMA
            if MASK:
                vt = tl.load(v_base + offs_d[:, None] * svn + cols[None, :], mask=cols[None, :] < N, other=0.0)
            else:
                vt = tl.load(v_base + offs_d[:, None] * svn + cols[None, :])
            acc = acc * alpha[:, None] + tl.dot((p * 256.0).to(tl.float8e4nv), tl.trans(vt))  # 2^8: away from fp8 subnormals
        else:
            if MASK:
                v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
            else:
                v = tl.load(v_base + cols[:, None] * svn + offs_d[None, :])
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
        return acc, l_i, m_new

    @triton.jit
    def _int8_attn_fwd(Q, K, V, QS, KS, VS, O, NQ, N, NBQ, NBK, svbh, svn, sob, soh, son,
                       H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       PV_FP8: tl.constexpr):
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
        v_base = V + pid_bh * svbh
        ks_ptr = KS + pid_bh * NBK
        n_full = (N // BN) * BN
        for start in range(0, n_full, BN):  # full blocks: no masks
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn,
                                        offs_n, offs_d, D, BN, PV_FP8, False)
        if n_full < N:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, n_full, N, svn,
                                        offs_n, offs_d, D, BN, PV_FP8, True)
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
    mean = x.float().mean(dim=-2).reshape(b * h, d).contiguous() if smooth else x.new_empty(1, dtype=torch.float32)
    q = torch.empty(b * h, n, d, dtype=torch.int8, device=x.device)
    s = torch.empty(b * h, nb, dtype=torch.float32, device=x.device)
    _quant_blocks[(nb, b * h)](x, mean, q, s, n, nb, x.stride(0), x.stride(1), x.stride(2), H=h, D=d, BLOCK=block,
                               MUL=mul, HAS_MEAN=smooth, num_warps=4)
    return q, s


def triton_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, smooth_k: bool = True,
                          pv: str = "fp16", bm: int = DEFAULT_BM, bn: int = DEFAULT_BN, num_warps: int = 8,
                          num_stages: int = 3) -> torch.Tensor:
    """``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)`` CUDA tensors -> ``(B, H, Nq, D)`` in q's dtype."""
    b, h, nq, d = q.shape
    n = k.shape[-2]
    qq, qs = quantize_qk(q, bm, scale * LOG2E, False)  # exp2-domain softmax
    kq, ks = quantize_qk(k, bn, 1.0, smooth_k)
    if pv == "fp8":
        vs = v.float().abs().amax(dim=-2).clamp_min(1e-8) / 448.0  # (B, H, D) per-channel
        v8 = (v.float() / vs[:, :, None, :]).to(torch.float8_e4m3fn).transpose(-1, -2).reshape(b * h, d, n)
        v8 = v8.contiguous()  # (B*H, D, N)
        vs = vs.reshape(b * h, d).contiguous()
        svbh, svn = v8.stride(0), v8.stride(1)
    else:
        v8 = v.to(torch.float16).reshape(b * h, n, d).contiguous()  # (B*H, N, D)
        vs = qs  # unused
        svbh, svn = v8.stride(0), v8.stride(1)
    out = torch.empty_like(q)
    grid = (triton.cdiv(nq, bm), b * h)
    _int8_attn_fwd[grid](qq, kq, v8, qs, ks, vs, out, nq, n, qs.shape[1], ks.shape[1], svbh, svn,
                         out.stride(0), out.stride(1), out.stride(2),
                         H=h, D=d, BM=bm, BN=bn, PV_FP8=pv == "fp8", num_warps=num_warps,
                         num_stages=num_stages)
    return out
