"""Triton kernels for the FP8 GEMM prologue of deployed linears (CUDA sm_89+).

Shape notation: ``x: (M, K)`` activations, ``qweight: (N, K // 2)`` uint8 int4 codes (``code + 8``,
even ``k`` in the low nibble, :func:`lsgq_compiler.deploy.modules.pack_nibbles`).

- :func:`rotate_quantize_fp8`: ``x -> (e4m3(xr / s), s)`` with ``xr = x R`` the block-Hadamard
  rotation in blocks of 128 (``R = diag(signs) blockdiag(H_128) / sqrt(128)``; ``block=0``: no
  rotation) and ``s = max(amax_row(xr), 1e-12) / 448`` per row, in one kernel: each program
  holds ``BM`` rows (16 .. 128, autotuned per ``K``), multiplies each 128-wide chunk by the +-1 Hadamard matrix on the tensor cores
  (fp32 accumulation; exact products), takes the row maxima in a first sweep and writes the FP8
  codes in a second sweep over the same rows (the rows' bytes are still in L2). It replaces the
  rotation's matmul, the rounding of ``xr`` to bf16 and the several passes of an unfused
  per-row quantization.
- :func:`unpack_int4_fp8`: the int4 codes as FP8 e4m3 values (exact: integers in [-8, 7]), one
  pass over the packed bytes; the ``int4r_fp8`` GEMM then runs on the FP8 tensor cores.

Numerics against the float references (:func:`rotate_quantize_fp8_reference`): the rotation's
sums are exact in fp32 up to their order, so codes agree except where a sum's last bit moves a
value across an FP8 rounding boundary (tests: >= 99.9% equal codes, SQNR >= 45 dB).
"""
from __future__ import annotations

import torch

from lsgq_compiler.hadamard import sylvester

try:  # Triton comes with CUDA builds of torch; CPU CI has none
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - CPU-only installs
    triton = None

FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0
EPS = 1e-12
ROT_BLOCK = 128  # the block the fused kernel rotates in (one tensor-core tile wide)


def available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, compute capability >= 8.9)."""
    if triton is None or not torch.cuda.is_available():
        return False
    device = torch.device(device if device is not None else "cuda")
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def rotate_quantize_fp8_reference(x: torch.Tensor, signs: torch.Tensor | None, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Float reference of :func:`rotate_quantize_fp8`: ``x (M, K)`` -> ``(x_fp8 (M, K), scale float32 (M,))``."""
    xf = x.float()
    if block:
        m, k = xf.shape
        xs = xf * signs.float()
        xf = (xs.reshape(m, k // block, block) @ sylvester(block, x.device, torch.float32)).reshape(m, k) \
            * block ** -0.5
    scale = xf.abs().amax(-1).clamp_min(EPS) / FP8_MAX
    return (xf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


if triton is not None:

    @triton.autotune(configs=[triton.Config({"BM": bm}, num_warps=w, num_stages=st)
                              for bm, w, st in ((16, 4, 3), (32, 4, 3), (64, 4, 3), (64, 8, 2), (128, 8, 2))],
                     key=["K", "ROT"])
    @triton.jit
    def _rot_quant_kernel(x_ptr, s_ptr, h_ptr, q_ptr, scale_ptr, M, K, stride_x, stride_q, norm,
                          ROT: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
        rmask = rows < M
        cols = tl.arange(0, BK)
        if ROT:
            h = tl.load(h_ptr + cols[:, None] * BK + cols[None, :])
        amax = tl.zeros((BM,), dtype=tl.float32)
        for k0 in range(0, K, BK):
            cmask = (k0 + cols) < K
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_x + (k0 + cols)[None, :], mask=mask, other=0.0)
            if ROT:
                sg = tl.load(s_ptr + k0 + cols)
                y = tl.dot((x * sg[None, :]).to(h.dtype), h) * norm
            else:
                y = x.to(tl.float32)
            amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
        scale = tl.maximum(amax, 1e-12) / 448.0
        tl.store(scale_ptr + rows, scale, mask=rmask)
        for k0 in range(0, K, BK):
            cmask = (k0 + cols) < K
            mask = rmask[:, None] & cmask[None, :]
            x = tl.load(x_ptr + rows[:, None] * stride_x + (k0 + cols)[None, :], mask=mask, other=0.0)
            if ROT:
                sg = tl.load(s_ptr + k0 + cols)
                y = tl.dot((x * sg[None, :]).to(h.dtype), h) * norm
            else:
                y = x.to(tl.float32)
            q = tl.clamp(tl.fdiv(y, scale[:, None], ieee_rounding=True), -448.0, 448.0)
            tl.store(q_ptr + rows[:, None] * stride_q + (k0 + cols)[None, :], q.to(tl.float8e4nv), mask=mask)

    @triton.jit
    def _unpack_kernel(p_ptr, out_ptr, n_bytes, BLOCK: tl.constexpr):
        pid = tl.program_id(0)
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        p = tl.load(p_ptr + offs, mask=offs < n_bytes, other=0).to(tl.int32)
        lo = ((p & 15) - 8).to(tl.float32).to(tl.float8e4nv)
        hi = ((p >> 4) - 8).to(tl.float32).to(tl.float8e4nv)
        out = tl.interleave(lo, hi)
        o = pid.to(tl.int64) * (2 * BLOCK) + tl.arange(0, 2 * BLOCK)
        tl.store(out_ptr + o, out, mask=o < 2 * n_bytes)


def rotate_quantize_fp8(x: torch.Tensor, signs: torch.Tensor | None = None,
                        block: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate (block-Hadamard, ``block`` 0 or 128) and quantize to FP8 e4m3 per row, fused.

    Args:
        x: ``(M, K)`` bf16 or fp16 on CUDA; ``K % 128 == 0`` when rotating.
        signs: ``(K,)`` of +-1 (the layer's rotation signs), used when ``block``.
        block: 0 (no rotation) or 128.
    Returns:
        ``(x_fp8 (M, K) float8_e4m3fn, scale float32 (M,))``; ``x_fp8 * scale ~= x R``.
    """
    if not available(x.device) or x.dtype not in (torch.bfloat16, torch.float16):
        return rotate_quantize_fp8_reference(x, signs, block)
    if block not in (0, ROT_BLOCK):
        raise ValueError(f"the fused kernel rotates in blocks of {ROT_BLOCK} (got {block})")
    x = x.contiguous()
    m, k = x.shape
    q = torch.empty((m, k), device=x.device, dtype=FP8)
    scale = torch.empty((m,), device=x.device, dtype=torch.float32)
    if m == 0:
        return q, scale
    if block:
        h, s = sylvester(ROT_BLOCK, x.device, x.dtype), signs.to(device=x.device, dtype=x.dtype).contiguous()
    else:
        h = s = x  # unused
    grid = lambda meta: (triton.cdiv(m, meta["BM"]),)  # noqa: E731  (rows per program: autotuned per K)
    _rot_quant_kernel[grid](x, s, h, q, scale, m, k, x.stride(0), q.stride(0), float(ROT_BLOCK ** -0.5),
                            ROT=bool(block), BK=ROT_BLOCK)
    return q, scale


def unpack_int4_fp8_reference(qweight: torch.Tensor) -> torch.Tensor:
    """``qweight uint8 (N, K // 2)`` -> FP8 e4m3 codes ``(N, K)`` (float reference)."""
    lo = (qweight & 0xF).to(torch.int16) - 8
    hi = (qweight >> 4).to(torch.int16) - 8
    return torch.stack((lo, hi), -1).reshape(qweight.shape[0], -1).float().to(FP8)


def unpack_int4_fp8(qweight: torch.Tensor) -> torch.Tensor:
    """The int4 codes of ``qweight uint8 (N, K // 2)`` as FP8 e4m3 values ``(N, K)`` (exact), one pass."""
    if not available(qweight.device):
        return unpack_int4_fp8_reference(qweight)
    qweight = qweight.contiguous()
    n, kh = qweight.shape
    out = torch.empty((n, 2 * kh), device=qweight.device, dtype=FP8)
    nb = qweight.numel()
    block = 2048
    if nb:
        _unpack_kernel[(triton.cdiv(nb, block),)](qweight, out, nb, BLOCK=block, num_warps=4)
    return out
