"""Fused Triton kernel for 8-bit attention (CUDA): INT8 ``Q K^T`` (int32 accumulate),
online softmax in fp32 (exp2), FP16 ``P V`` with fp32 accumulation.

Shape notation: ``q, k, v: (B, H, N, D)``, ``D`` in {64, 128}; Q blocks of ``BLOCK_M``
tokens and K blocks of ``BLOCK_N`` tokens each carry one float32 scale.
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
BLOCK_M, BLOCK_N = 128, 64


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _int8_attn_fwd(Q, K, V, QS, KS, O, N, NBQ, NBK,
                       sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sob, soh, son,
                       H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + b * sqb + h * sqh + offs_m[:, None] * sqn + offs_d[None, :], mask=offs_m[:, None] < N, other=0)
        q_scale = tl.load(QS + pid_bh * NBQ + pid_m)
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        l_i = tl.zeros((BM,), tl.float32)
        acc = tl.zeros((BM, D), tl.float32)
        for start in range(0, N, BN):
            cols = start + offs_n
            kt = tl.load(K + b * skb + h * skh + cols[None, :] * skn + offs_d[:, None], mask=cols[None, :] < N, other=0)
            k_scale = tl.load(KS + pid_bh * NBK + start // BN)
            s = tl.dot(q, kt).to(tl.float32) * (q_scale * k_scale)
            s = tl.where(cols[None, :] < N, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.math.exp2(s - m_new[:, None])
            alpha = tl.math.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(V + b * svb + h * svh + cols[:, None] * svn + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(tl.float16), v)
            m_i = m_new
        out = acc / l_i[:, None]
        tl.store(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < N)


def _quant_blocks_fast(x: torch.Tensor, block: int, mul: float) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 per token-block on the GPU: ``x: (B, H, N, D)`` -> ``(q (B,H,N,D), scale (B*H, nb))``."""
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    pad = nb * block - n
    xf = x.float() * mul
    if pad:
        xf = torch.nn.functional.pad(xf, (0, 0, 0, pad))
    xb = xf.view(b, h, nb, block, d)
    scale = xb.abs().amax(dim=(-2, -1)).clamp_min(1e-8) / 127.0
    q = torch.round(xb / scale[..., None, None]).clamp_(-127, 127).to(torch.int8).view(b, h, nb * block, d)
    return q[:, :, :n].contiguous(), scale.reshape(b * h, nb).contiguous()


def triton_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                          smooth_k: bool = True) -> torch.Tensor:
    """``q, k, v: (B, H, N, D)`` CUDA tensors -> ``(B, H, N, D)`` in q's dtype."""
    b, h, n, d = q.shape
    if smooth_k:
        k = k - k.mean(dim=-2, keepdim=True)
    qq, qs = _quant_blocks_fast(q, BLOCK_M, scale * LOG2E)  # exp2-domain softmax
    kq, ks = _quant_blocks_fast(k, BLOCK_N, 1.0)
    v16 = v.to(torch.float16).contiguous()
    out = torch.empty_like(q)
    grid = (triton.cdiv(n, BLOCK_M), b * h)
    _int8_attn_fwd[grid](qq, kq, v16, qs, ks, out, n, qs.shape[1], ks.shape[1],
                         qq.stride(0), qq.stride(1), qq.stride(2), kq.stride(0), kq.stride(1), kq.stride(2),
                         v16.stride(0), v16.stride(1), v16.stride(2), out.stride(0), out.stride(1), out.stride(2),
                         H=h, D=d, BM=BLOCK_M, BN=BLOCK_N, num_warps=8, num_stages=3)
    return out
