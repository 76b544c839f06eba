"""8-bit attention in the manner of SageAttention: INT8 ``Q K^T`` with K smoothing, 16-bit ``P V``.

Shape notation: ``q, k, v: (B, H, N, D)``; per-block scales ``(B, H, ceil(N / block))``.

- K smoothing: ``K <- K - mean_tokens(K)`` per head. Softmax is invariant to adding a
  per-row constant, and ``q . mean(K)`` is one, so this is exact before quantization and
  removes the channel bias that makes K hard to quantize.
- Q and K are quantized to int8 per block of tokens (symmetric); the softmax scale is
  folded into Q's scale. ``P`` and ``V`` are multiplied in V's 16-bit type (bf16 or fp16; the
  CPU reference uses fp16) with fp32 accumulation.

``lsgq::int8_attention`` is a torch custom op: on CUDA with Triton it runs the fused
kernel (:mod:`lsgq_compiler.kernels.triton_attention`); elsewhere it runs the reference
simulation below (same quantization, dense softmax: for small shapes and tests).
"""
from __future__ import annotations

import math

import torch


def quantize_blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per block of ``block`` tokens.

    Args:
        x: ``(B, H, N, D)``.
    Returns:
        ``(q int8 (B, H, N, D), scale float32 (B, H, ceil(N / block)))``.
    """
    b, h, n, d = x.shape
    nb = math.ceil(n / block)
    pad = nb * block - n
    xp = torch.nn.functional.pad(x.float(), (0, 0, 0, pad)) if pad else x.float()
    xb = xp.view(b, h, nb, block, d)
    scale = xb.abs().amax(dim=(-2, -1)).clamp_min(1e-8) / 127.0
    q = torch.round(xb / scale[..., None, None]).clamp(-127, 127).to(torch.int8)
    return q.view(b, h, nb * block, d)[:, :, :n], scale


def _dequant(q: torch.Tensor, scale: torch.Tensor, block: int) -> torch.Tensor:
    s = scale.repeat_interleave(block, dim=-1)[..., : q.shape[-2]]
    return q.float() * s[..., None]


def int8_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None,
                             block_q: int = 128, block_k: int = 64, smooth_k: bool = True) -> torch.Tensor:
    """Simulated 8-bit attention (dense; small shapes). Returns ``(B, H, N, D)`` in q's dtype."""
    scale = scale if scale is not None else q.shape[-1] ** -0.5
    if smooth_k:
        k = k - k.mean(dim=-2, keepdim=True)
    qq, sq = quantize_blocks(q.float() * scale, block_q)
    kq, sk = quantize_blocks(k, block_k)
    s = _dequant(qq, sq, block_q) @ _dequant(kq, sk, block_k).transpose(-1, -2)
    p = torch.softmax(s, dim=-1)
    out = p.half().float() @ v.half().float()
    return out.to(q.dtype)


#: kernel settings for CUDA per head dim, tuned on an H200 by bench/attention_kernel.py
#: (bench/results/attention_kernel.json at head dim 64, attention_kernel_d128.json at 128);
#: P.V in bf16 reads a bf16 model's V in place (no fp16 copy); ``fixed_max``: a Cauchy-Schwarz
#: bound replaces the running row max where it is small enough (bf16 P only); ``rowsum_mma``:
#: softmax denominators on the tensor cores (faster at head dim 64, slower at 128)
CUDA_SETTINGS = {64: {"pv": "bf16", "bm": 128, "bn": 64, "num_warps": 4, "num_stages": 4, "magic": True,
                      "fixed_max": True, "rowsum_mma": True},
                 128: {"pv": "bf16", "bm": 128, "bn": 64, "num_warps": 4, "num_stages": 3, "magic": True,
                       "fixed_max": True}}


def cuda_settings(head_dim: int) -> dict:
    """Tuned kernel settings for ``head_dim`` (the nearest tuned size at or above it)."""
    for d in sorted(CUDA_SETTINGS):
        if head_dim <= d:
            return dict(CUDA_SETTINGS[d])
    return dict(CUDA_SETTINGS[max(CUDA_SETTINGS)])


@torch.library.custom_op("lsgq::int8_attention", mutates_args=())
def int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, smooth_k: bool = True) -> torch.Tensor:
    """8-bit attention; ``q, k, v: (B, H, N, D)`` -> ``(B, H, N, D)``."""
    if q.is_cuda:
        from .triton_attention import triton_available, triton_int8_attention

        if triton_available():
            cfg = cuda_settings(q.shape[-1])
            if v.dtype == torch.float16 and cfg["pv"] == "bf16":
                cfg["pv"] = "fp16"  # P.V in V's own 16-bit type: V is read in place, never copied
                cfg["fixed_max"] = False  # fp16 P cannot hold the fixed-offset range
            return triton_int8_attention(q, k, v, scale, smooth_k, **cfg)
    return int8_attention_reference(q, k, v, scale, smooth_k=smooth_k).contiguous()  # the fake's layout


@int8_attention.register_fake
def _(q, k, v, scale, smooth_k=True):
    return q.new_empty(q.shape)  # contiguous, as both implementations return (q may be a permuted view)
