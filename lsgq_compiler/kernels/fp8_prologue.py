"""Triton kernels for the FP8 GEMM prologue of deployed linears (CUDA sm_89+).

Shape notation: ``x: (M, K)`` activations, ``qweight: (N, K // 2)`` uint8 int4 codes (``code + 8``,
even ``k`` in the low nibble, :func:`lsgq_compiler.deploy.modules.pack_nibbles`).

- :func:`rotate_quantize_fp8`: ``x -> (e4m3([xr, t] / s), s)`` with ``xr = bf16(x * col) R`` the block-Hadamard
  rotation in blocks of 128 (``R = diag(signs) blockdiag(H_128) / sqrt(128)``; ``block=0``: no
  rotation) and ``s = max(amax_row(xr), 1e-12) / 448`` per row, in one kernel: each program
  holds ``BM`` rows (16 .. 128, autotuned per ``K``), multiplies each 128-wide chunk by the +-1 Hadamard matrix on the tensor cores
  (fp32 accumulation; exact products), takes the row maxima in a first sweep and writes the FP8
  codes in a second sweep over the same rows (the rows' bytes are still in L2). It replaces the
  rotation's matmul, the rounding of ``xr`` to bf16 and the several passes of an unfused
  per-row quantization. ``col`` folds the layer's ``1 / smooth`` into the load (no separate pass
  over ``x``); with a low-rank factor the same tiles also give ``t = x_s L_down^T / c`` (the
  branch then runs inside the FP8 GEMM as ``R`` extra columns, one joint row scale). ``act`` applies
  the preceding tanh-GELU on load (a feed-forward's output layer: the GELU's own pass over the wide
  hidden state disappears; measured slower on the H200, so off by default, see
  :func:`lsgq_compiler.deploy.modules.fuse_gelu`).
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
ACT_NONE, ACT_GELU_TANH = 0, 1  # input activations the prologue can apply on load
#: the fused kernel's schedule (bench/deploy_gpu.py --parts linear_parts times each choice; H200,
#: M = 17,776, K = 3072 with smoothing + low-rank: 0.137 ms plain, 0.131 with ``recip``, 0.22 with ``prefetch``):
#: ``prefetch``: issue the next tile's load before this tile's math (two tiles in flight per program);
#: ``recip``: multiply by one reciprocal per row instead of dividing each value (codes differ from
#: ``x / scale`` only where the product lands exactly on an FP8 rounding boundary);
#: ``evict``: L2 hints, keep the rows for the second sweep and drop them after it;
#: ``split``: rotate each 128-block as ``H_4 (x) H_32`` (Sylvester: ``H_128[(a, i), (b, j)] = H_4[a, b] H_32[i, j]``):
#: four ``(BM, 32) @ (32, 32)`` tensor-core products and a 4-point add/subtract butterfly, 32 + 2 operations
#: per value instead of 128 multiply-adds (the kernel's two sweeps each rotate every tile)
SCHEDULE = {"prefetch": False, "recip": True, "evict": False, "split": False}
SPLIT_WIDTH = ROT_BLOCK // 4  # the sub-block of the ``split`` schedule


#: the launch configurations the autotuner chooses from (rows per program, warps, pipeline stages)
CONFIGS = tuple({"BM": bm, "num_warps": w, "num_stages": st}
                for bm, w, st in ((16, 4, 3), (32, 4, 3), (32, 8, 4), (64, 4, 3), (64, 8, 2), (64, 8, 4), (128, 8, 2)))


def available(device: torch.device | str | None = None) -> bool:
    """True when the Triton kernels can run on ``device`` (CUDA, compute capability >= 8.9)."""
    if triton is None or not torch.cuda.is_available():
        return False
    device = torch.device(device if device is not None else "cuda")
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


def _pad_rank(r: int) -> int:
    """``r`` rounded up to a power of two >= 16 (``R``; zero rows / columns pad)."""
    return 0 if r == 0 else max(16, 1 << (r - 1).bit_length())


def lowrank_cols(r: int) -> int:
    """The GEMM columns a rank-``r`` branch takes: ``3 R`` (``t_hi, t_lo, t_hi`` against ``B_hi, B_hi, B_lo``)."""
    return 3 * _pad_rank(r)


def split_fp8(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float ``v`` as two float8_e4m3fn terms: ``hi = e4m3(v)``, ``lo = e4m3(v - hi)`` (each clamped to +-448);
    ``hi + lo`` keeps about 8 significant bits where ``hi`` alone keeps 4."""
    hi = v.clamp(-FP8_MAX, FP8_MAX).to(FP8)
    return hi, (v - hi.float()).clamp(-FP8_MAX, FP8_MAX).to(FP8)


def lowrank_weight_cols(b: torch.Tensor) -> torch.Tensor:
    """``b = L_up c / w_scale`` float ``(N, r)`` -> its stored FP8 form ``(N, 2R)`` float8_e4m3fn:
    ``[B_hi, B_lo]`` (:func:`split_fp8`), each zero-padded to ``R`` columns. The GEMM multiplies
    ``[B_hi, B_hi, B_lo]`` (:func:`_append_rank_cols` lays that out)."""
    n, r = b.shape
    hi, lo = split_fp8(b.float())
    pad = torch.zeros((n, _pad_rank(r) - r), dtype=torch.uint8, device=b.device)
    return torch.cat([hi.view(torch.uint8), pad, lo.view(torch.uint8), pad], 1).view(FP8)


def e4m3_round_reference(v: torch.Tensor) -> torch.Tensor:
    """The steps of the kernel's ``_e4m3_round`` in torch: float32 ``v`` (``|v| <= 448``) rounded to the nearest
    float8_e4m3fn value, ties to even, kept in float32 (``(v + C) - C`` with ``C = 1.5 * 2^(e + 20)``, ``e`` the
    exponent of ``v``, at least -6). Equals ``v.to(float8_e4m3fn).float()`` (tests/kernels check every case)."""
    v = v.float()
    ef = ((v.view(torch.int32) >> 23) & 255).clamp_min(121)
    c = (((ef + 20) << 23) | (1 << 22)).view(torch.float32)
    return (v + c) - c


def apply_act(x: torch.Tensor, act: int) -> torch.Tensor:
    """The input activation the prologue applies first: ``act`` 0 = none, 1 = ``gelu(x, approximate="tanh")``
    in x's dtype (what diffusers' ``GELU(approximate="tanh")`` computes)."""
    if act == ACT_NONE:
        return x
    if act == ACT_GELU_TANH:
        return torch.nn.functional.gelu(x, approximate="tanh")
    raise ValueError(f"unknown input activation code {act} (0: none, 1: gelu tanh)")


def rotate_quantize_fp8_reference(x: torch.Tensor, col: torch.Tensor | None, block: int,
                                  lr_down: torch.Tensor | None = None, act: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Float reference of :func:`rotate_quantize_fp8`: ``x (M, K)`` -> ``(q (M, K + 3R) e4m3, scale float32 (M,))``.

    ``x <- act(x)`` (:func:`apply_act`), ``xd = x * col`` in x's dtype (``col``: the per-column multiplier, None = 1), ``xr = xd H_block /
    sqrt(block)`` (``block = 0``: ``xr = xd``), ``t = xd lr_down^T`` (``lr_down (r, K)``, zero-padded to
    ``R`` = :func:`_pad_rank` rows), ``scale = max(amax_row([xr, t]), 1e-12) / 448``,
    ``q = [e4m3(xr / scale), t_hi, t_lo, t_hi]`` with ``t_hi = e4m3(t / scale)``, ``t_lo = e4m3(t / scale - t_hi)``."""
    x = apply_act(x, act)
    xd = x if col is None else (x.float() * col.float()).to(x.dtype)
    xf = xd.float()
    m, k = xf.shape
    if block:
        xf = (xf.reshape(m, k // block, block) @ sylvester(block, x.device, torch.float32)).reshape(m, k) \
            * block ** -0.5
    amax = xf.abs().amax(-1)
    t = None
    if lr_down is not None:
        r = lr_down.shape[0]
        t = torch.cat([xd.float() @ lr_down.float().t(), xf.new_zeros((m, _pad_rank(r) - r))], 1)
        amax = torch.maximum(amax, t.abs().amax(-1))
    scale = amax.clamp_min(EPS) / FP8_MAX
    q = (xf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(FP8)
    if t is None:
        return q, scale
    hi, lo = split_fp8(t / scale[:, None])
    return torch.cat([v.view(torch.uint8) for v in (q, hi, lo, hi)], 1).view(FP8), scale


if triton is not None:

    @triton.jit
    def _load_tile(x_ptr, rows, rmask, cols, k0, K, stride_x, EVICT: tl.constexpr):
        """The ``(BM, BK)`` tile of ``x`` at column ``k0`` (zeros outside ``M x K``)."""
        cmask = (k0 + cols) < K
        return tl.load(x_ptr + rows[:, None] * stride_x + (k0 + cols)[None, :], mask=rmask[:, None] & cmask[None, :],
                       other=0.0, eviction_policy=EVICT)

    @triton.jit
    def _e4m3_round(v):
        """float32 ``v`` (``|v| <= 448``) rounded to the nearest float8_e4m3fn value (ties to even), in
        float32: ``(v + C) - C`` with ``C = 1.5 * 2^(e + 20)`` for ``v``'s exponent ``e`` (at least -6, the
        subnormals' spacing), the add and subtract as explicit ``add.rn`` / ``sub.rn``. The low-rank split
        uses it instead of ``v.to(float8e4nv).to(float32)``: values derived back from an FP8 tensor came out
        misplaced on the H200 (Triton 3.6; ``t_lo`` 2.5 dB against the reference in every launch config)."""
        ef = tl.maximum((v.to(tl.int32, bitcast=True) >> 23) & 255, 121)
        c = (((ef + 20) << 23) | (1 << 22)).to(tl.float32, bitcast=True)
        return tl.inline_asm_elementwise("{ add.rn.f32 $0, $1, $2; sub.rn.f32 $0, $0, $2; }", "=r,r,r", [v, c],
                                         dtype=tl.float32, is_pure=True, pack=1)

    @triton.jit
    def _transform(x, c_ptr, h, k0, cols, K, norm, ROT: tl.constexpr, COL: tl.constexpr, ACT: tl.constexpr):
        """A loaded tile -> ``(xd, y)``: ``xd = x's dtype(act(x) * col)`` (what the low-rank factor sees) and
        ``y = xd H / sqrt(128)`` in float32 on the tensor cores (``ROT``; exact products) or ``xd``."""
        if ACT == 1:  # tanh-approximated GELU in float32, rounded to x's dtype (torch's gelu(approximate="tanh")):
            # 0.5 x (1 + tanh(u)) = x / (1 + exp(-2u)), the form without cancellation for negative u
            xf = x.to(tl.float32)
            inner = 0.7978845608028654 * (xf + 0.044715 * (xf * xf * xf))
            x = (xf / (1.0 + tl.exp(-2.0 * inner))).to(x.dtype)
        if COL:
            x = (x * tl.load(c_ptr + k0 + cols, mask=(k0 + cols) < K, other=0.0)[None, :]).to(x.dtype)
        if ROT:
            y = tl.dot(x.to(h.dtype), h) * norm
        else:
            y = x.to(tl.float32)
        return x, y

    @triton.jit
    def _split_tile(x_ptr, c_ptr, hs, rows, rmask, scols, k0, K, stride_x, norm, EV: tl.constexpr,
                    COL: tl.constexpr, ACT: tl.constexpr, SW: tl.constexpr):
        """The 128-wide tile at column ``k0`` as four ``(BM, SW)`` pieces ``(x0..x3, y0..y3)``: ``xa`` as
        :func:`_transform` leaves it (act, col), ``ya`` the rotated piece ``b`` = sum_a H_4[a, b] (xa H_SW),
        float32, times ``norm`` (``H_128 = H_4 (x) H_SW``)."""
        x0, z0 = _transform(_load_tile(x_ptr, rows, rmask, scols, k0, K, stride_x, EV), c_ptr, hs, k0, scols, K,
                            1.0, True, COL, ACT)
        x1, z1 = _transform(_load_tile(x_ptr, rows, rmask, scols, k0 + SW, K, stride_x, EV), c_ptr, hs, k0 + SW,
                            scols, K, 1.0, True, COL, ACT)
        x2, z2 = _transform(_load_tile(x_ptr, rows, rmask, scols, k0 + 2 * SW, K, stride_x, EV), c_ptr, hs,
                            k0 + 2 * SW, scols, K, 1.0, True, COL, ACT)
        x3, z3 = _transform(_load_tile(x_ptr, rows, rmask, scols, k0 + 3 * SW, K, stride_x, EV), c_ptr, hs,
                            k0 + 3 * SW, scols, K, 1.0, True, COL, ACT)
        a0, a1, a2, a3 = z0 + z1, z0 - z1, z2 + z3, z2 - z3
        return x0, x1, x2, x3, (a0 + a2) * norm, (a1 + a3) * norm, (a0 - a2) * norm, (a1 - a3) * norm

    @triton.jit
    def _rank_part(t, x, d_ptr, ranks, k0, scols, K):
        """``t += x d[:, k0 : k0 + SW]^T`` for one ``(BM, SW)`` piece (the low-rank projection, bf16 products)."""
        dn = tl.load(d_ptr + ranks[:, None] * K + (k0 + scols)[None, :], mask=((k0 + scols) < K)[None, :], other=0.0)
        return t + tl.dot(x.to(tl.bfloat16), tl.trans(dn))

    @triton.jit
    def _store_q(q_ptr, y, inv, scale, rows, rmask, cols, k0, K, stride_q, RECIP: tl.constexpr):
        """FP8 codes of the rotated piece ``y`` (row scale ``scale``, or its reciprocal ``inv``) at column ``k0``."""
        if RECIP:
            q = tl.clamp(y * inv[:, None], -448.0, 448.0)
        else:
            q = tl.clamp(tl.fdiv(y, scale[:, None], ieee_rounding=True), -448.0, 448.0)
        cmask = (k0 + cols) < K
        tl.store(q_ptr + rows[:, None] * stride_q + (k0 + cols)[None, :], q.to(tl.float8e4nv),
                 mask=rmask[:, None] & cmask[None, :])

    @triton.autotune(configs=[triton.Config({"BM": c["BM"]}, num_warps=c["num_warps"], num_stages=c["num_stages"])
                              for c in CONFIGS],
                     key=["K", "ROT", "R", "ACT", "PREFETCH", "RECIP", "EV1", "SPLIT"])
    @triton.jit
    def _rot_quant_kernel(x_ptr, c_ptr, h_ptr, d_ptr, q_ptr, scale_ptr, M, K, stride_x, stride_q, norm,
                          ROT: tl.constexpr, COL: tl.constexpr, R: tl.constexpr, ACT: tl.constexpr,
                          PREFETCH: tl.constexpr, RECIP: tl.constexpr, EV1: tl.constexpr, EV2: tl.constexpr,
                          SPLIT: tl.constexpr, SW: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
        rmask = rows < M
        cols = tl.arange(0, BK)
        amax = tl.zeros((BM,), dtype=tl.float32)
        if R > 0:
            ranks = tl.arange(0, R)
            t = tl.zeros((BM, R), dtype=tl.float32)
        if SPLIT:  # H_128 = H_4 (x) H_SW: four small products and a butterfly per tile, both sweeps
            scols = tl.arange(0, SW)
            hs = tl.load(h_ptr + scols[:, None] * SW + scols[None, :])
            # sweep 1: row maxima (and the low-rank projections)
            for k0 in range(0, K, BK):
                x0, x1, x2, x3, y0, y1, y2, y3 = _split_tile(x_ptr, c_ptr, hs, rows, rmask, scols, k0, K, stride_x,
                                                             norm, EV1, COL, ACT, SW)
                amax = tl.maximum(amax, tl.maximum(tl.maximum(tl.max(tl.abs(y0), axis=1), tl.max(tl.abs(y1), axis=1)),
                                                   tl.maximum(tl.max(tl.abs(y2), axis=1), tl.max(tl.abs(y3), axis=1))))
                if R > 0:
                    t = _rank_part(t, x0, d_ptr, ranks, k0, scols, K)
                    t = _rank_part(t, x1, d_ptr, ranks, k0 + SW, scols, K)
                    t = _rank_part(t, x2, d_ptr, ranks, k0 + 2 * SW, scols, K)
                    t = _rank_part(t, x3, d_ptr, ranks, k0 + 3 * SW, scols, K)
        else:
            if ROT:
                h = tl.load(h_ptr + cols[:, None] * BK + cols[None, :])
            else:
                h = 0
            # sweep 1: row maxima (and the low-rank projections); PREFETCH: the next tile's load is issued
            # before this tile's math, so two tiles per program are in flight
            if PREFETCH:
                nxt = _load_tile(x_ptr, rows, rmask, cols, 0, K, stride_x, EV1)
            for k0 in range(0, K, BK):
                if PREFETCH:
                    x = nxt
                    nxt = _load_tile(x_ptr, rows, rmask, cols, k0 + BK, K, stride_x, EV1)  # masked off past K
                else:
                    x = _load_tile(x_ptr, rows, rmask, cols, k0, K, stride_x, EV1)
                x, y = _transform(x, c_ptr, h, k0, cols, K, norm, ROT, COL, ACT)
                amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
                if R > 0:  # low-rank projections from the same tile (lr_down zero-padded to R rows)
                    t = _rank_part(t, x, d_ptr, ranks, k0, cols, K)
            if PREFETCH:
                nxt = _load_tile(x_ptr, rows, rmask, cols, 0, K, stride_x, EV2)
        if R > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(t), axis=1))
        scale = tl.maximum(amax, 1e-12) / 448.0
        tl.store(scale_ptr + rows, scale, mask=rmask)
        if RECIP:  # one correctly rounded reciprocal per row; codes differ from x / scale only at ties (rare)
            inv = tl.fdiv(tl.full((BM,), 1.0, tl.float32), scale, ieee_rounding=True)
        else:
            inv = scale  # unused: _store_q divides by scale
        # sweep 2: the same tiles again (from L2 where they stayed), quantized
        if SPLIT:
            for k0 in range(0, K, BK):
                x0, x1, x2, x3, y0, y1, y2, y3 = _split_tile(x_ptr, c_ptr, hs, rows, rmask, scols, k0, K, stride_x,
                                                             norm, EV2, COL, ACT, SW)
                _store_q(q_ptr, y0, inv, scale, rows, rmask, scols, k0, K, stride_q, RECIP)
                _store_q(q_ptr, y1, inv, scale, rows, rmask, scols, k0 + SW, K, stride_q, RECIP)
                _store_q(q_ptr, y2, inv, scale, rows, rmask, scols, k0 + 2 * SW, K, stride_q, RECIP)
                _store_q(q_ptr, y3, inv, scale, rows, rmask, scols, k0 + 3 * SW, K, stride_q, RECIP)
        else:
            for k0 in range(0, K, BK):
                if PREFETCH:
                    x = nxt
                    nxt = _load_tile(x_ptr, rows, rmask, cols, k0 + BK, K, stride_x, EV2)
                else:
                    x = _load_tile(x_ptr, rows, rmask, cols, k0, K, stride_x, EV2)
                x, y = _transform(x, c_ptr, h, k0, cols, K, norm, ROT, COL, ACT)
                _store_q(q_ptr, y, inv, scale, rows, rmask, cols, k0, K, stride_q, RECIP)
        if R > 0:  # [t_hi, t_lo, t_hi]: the GEMM's B side is [B_hi, B_hi, B_lo]
            tq = tl.fdiv(t, scale[:, None], ieee_rounding=True)
            hv = _e4m3_round(tl.clamp(tq, -448.0, 448.0))  # exactly an e4m3 value: its conversion is exact
            hi = hv.to(tl.float8e4nv)
            lo = tl.clamp(tq - hv, -448.0, 448.0).to(tl.float8e4nv)
            base = q_ptr + rows[:, None] * stride_q + (K + ranks)[None, :]
            tl.store(base, hi, mask=rmask[:, None])
            tl.store(base + R, lo, mask=rmask[:, None])
            tl.store(base + 2 * R, hi, mask=rmask[:, None])

    @triton.jit
    def _unpack_kernel(p_ptr, out_ptr, N, KH, LD, BN: tl.constexpr, BKH: tl.constexpr):
        rows = tl.program_id(0).to(tl.int64) * BN + tl.arange(0, BN)
        cb = tl.program_id(1) * BKH + tl.arange(0, BKH)
        rmask = rows < N
        p = tl.load(p_ptr + rows[:, None] * KH + cb[None, :], mask=rmask[:, None] & (cb < KH)[None, :],
                    other=0).to(tl.int32)
        lo = ((p & 15) - 8).to(tl.float32).to(tl.float8e4nv)
        hi = ((p >> 4) - 8).to(tl.float32).to(tl.float8e4nv)
        oc = tl.program_id(1) * (2 * BKH) + tl.arange(0, 2 * BKH)  # output rows of LD columns (codes first)
        tl.store(out_ptr + rows[:, None] * LD + oc[None, :], tl.interleave(lo, hi),
                 mask=rmask[:, None] & (oc < 2 * KH)[None, :])


def rotate_quantize_fp8(x: torch.Tensor, col: torch.Tensor | None = None, block: int = 0,
                        lr_down: torch.Tensor | None = None, act: int = ACT_NONE,
                        schedule: dict | None = None, config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the input activation, scale columns, rotate (block-Hadamard, ``block`` 0 or 128), project on
    the low-rank factor and quantize to FP8 e4m3 per row, fused (numerics: :func:`rotate_quantize_fp8_reference`).

    Args:
        x: ``(M, K)`` bf16 or fp16 on CUDA; ``K % 128 == 0`` when rotating.
        col: ``(K,)`` per-column multiplier (the rotation signs times ``1 / smooth``) or None.
        block: 0 (no rotation) or 128.
        lr_down: ``(r, K)`` bf16 low-rank factor (already times ``col``'s signs and ``1 / c``) or None.
        act: :data:`ACT_NONE` or :data:`ACT_GELU_TANH` (the preceding GELU, fused into the load).
        schedule: overrides of :data:`SCHEDULE` (benchmarks; ``split`` rotates as ``H_4 (x) H_32``, ignores ``prefetch``).
        config: one launch configuration instead of the autotuner's choice, e.g.
            ``{"BM": 64, "num_warps": 8, "num_stages": 2}`` (tests run every configuration).
    Returns:
        ``(q (M, K + 3R) float8_e4m3fn, scale float32 (M,))``: ``q[:, :K] * scale ~= x R``, then the
        low-rank projections ``t`` as ``[t_hi, t_lo, t_hi]`` (``R`` = ``r`` padded to a power of two >= 16).
    """
    if not available(x.device) or x.dtype not in (torch.bfloat16, torch.float16):
        return rotate_quantize_fp8_reference(x, col, block, lr_down, act)
    if act not in (ACT_NONE, ACT_GELU_TANH):
        raise ValueError(f"unknown input activation code {act} (0: none, 1: gelu tanh)")
    sch = {**SCHEDULE, **(schedule or {})}
    if block not in (0, ROT_BLOCK):
        raise ValueError(f"the fused kernel rotates in blocks of {ROT_BLOCK} (got {block})")
    x = x.contiguous()
    m, k = x.shape
    r = 0 if lr_down is None else lr_down.shape[0]
    rp = _pad_rank(r)
    q = torch.empty((m, k + 3 * rp), device=x.device, dtype=FP8)
    scale = torch.empty((m,), device=x.device, dtype=torch.float32)
    if m == 0:
        return q, scale
    # with the low-rank columns the kernel takes its tensor-core path (the identity for block 0): chosen on
    # 2026-12-02 against wrong t_lo columns that turned out (2026-12-03) to come from the hi/lo split, in every path
    rot = bool(block) or r > 0
    split = bool(block) and bool(sch["split"])
    if split:
        h = sylvester(SPLIT_WIDTH, x.device, x.dtype).contiguous()
    elif block:
        h = sylvester(ROT_BLOCK, x.device, x.dtype)
    elif rot:
        h = torch.eye(ROT_BLOCK, device=x.device, dtype=x.dtype)
    else:
        h = x  # unused placeholder
    c = col.to(device=x.device, dtype=torch.float32).contiguous() if col is not None else x
    if r:
        d = torch.zeros((rp, k), device=x.device, dtype=torch.bfloat16)
        d[:r] = lr_down
    else:
        d = x
    grid = lambda meta: (triton.cdiv(m, meta["BM"]),)  # noqa: E731  (rows per program: autotuned per K)
    kernel = _rot_quant_kernel if config is None else _rot_quant_kernel.fn
    kernel[grid](x, c, h, d, q, scale, m, k, x.stride(0), q.stride(0),
                 float(ROT_BLOCK ** -0.5) if block else 1.0, ROT=rot, COL=col is not None, R=rp,
                 ACT=int(act), PREFETCH=bool(sch["prefetch"]), RECIP=bool(sch["recip"]),
                 EV1="evict_last" if sch["evict"] else "", EV2="evict_first" if sch["evict"] else "",
                 SPLIT=split, SW=SPLIT_WIDTH, BK=ROT_BLOCK, **(config or {}))
    return q, scale


def unpack_int4_fp8_reference(qweight: torch.Tensor, lr_up: torch.Tensor | None = None) -> torch.Tensor:
    """``qweight uint8 (N, K // 2)`` -> FP8 e4m3 ``(N, K + 3R)``: the codes, then ``[B_hi, B_hi, B_lo]``
    from ``lr_up = [B_hi, B_lo] (N, 2R)`` float8_e4m3fn (:func:`lowrank_weight_cols`) when given (float reference)."""
    lo = (qweight & 0xF).to(torch.int16) - 8
    hi = (qweight >> 4).to(torch.int16) - 8
    w = torch.stack((lo, hi), -1).reshape(qweight.shape[0], -1).float().to(FP8)
    return w if lr_up is None else _append_rank_cols(w, lr_up)


def _append_rank_cols(w: torch.Tensor, lr_up: torch.Tensor) -> torch.Tensor:
    """``[w, B_hi, B_hi, B_lo]`` from ``w (N, K)`` and ``lr_up = [B_hi, B_lo] (N, 2R)``, float8_e4m3fn."""
    u = lr_up.view(torch.uint8)
    hi = u[:, :u.shape[1] // 2]
    return torch.cat([w.view(torch.uint8), hi, u], 1).view(FP8)


def unpack_int4_fp8(qweight: torch.Tensor, lr_up: torch.Tensor | None = None) -> torch.Tensor:
    """The int4 codes of ``qweight uint8 (N, K // 2)`` as FP8 e4m3 values (exact), one pass, followed by
    ``[B_hi, B_hi, B_lo]`` from ``lr_up = [B_hi, B_lo] (N, 2R)`` float8_e4m3fn when given: ``(N, K + 3R)``."""
    if not available(qweight.device):
        return unpack_int4_fp8_reference(qweight, lr_up)
    qweight = qweight.contiguous()
    n, kh = qweight.shape
    rp = 0 if lr_up is None else lr_up.shape[1] // 2
    ld = 2 * kh + 3 * rp
    out = torch.empty((n, ld), device=qweight.device, dtype=FP8)
    if rp:
        u, o = lr_up.view(torch.uint8), out.view(torch.uint8)
        o[:, 2 * kh:2 * kh + rp].copy_(u[:, :rp])
        o[:, 2 * kh + rp:].copy_(u)
    if qweight.numel():
        bn, bkh = 16, 256
        _unpack_kernel[(triton.cdiv(n, bn), triton.cdiv(kh, bkh))](qweight, out, n, kh, ld, BN=bn, BKH=bkh,
                                                                    num_warps=4)
    return out
