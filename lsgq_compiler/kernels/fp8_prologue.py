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
- :func:`rotate_quantize_fp8_multi`: the same for up to three outputs of one input (an attention's q, k and v
  projections, each with its own smoothing, signs and low-rank factor): each tile of ``x`` is loaded once per
  sweep for all of them, so the input is read twice in all instead of twice per output.
- :func:`unpack_int4_fp8`: the int4 codes as FP8 e4m3 values (exact: integers in [-8, 7]), one
  pass over the packed bytes; the ``int4r_fp8`` GEMM then runs on the FP8 tensor cores.

Numerics against the float references (:func:`rotate_quantize_fp8_reference`): the rotation's
sums are exact in fp32 up to their order, so codes agree except where a sum's last bit moves a
value across an FP8 rounding boundary (tests: >= 99.9% equal codes, SQNR >= 45 dB).
"""
from __future__ import annotations

from collections.abc import Sequence

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
#: the fused kernel's schedule (bench/deploy_gpu.py --parts linear_parts times each choice):
#: ``recip``: multiply by one reciprocal per row instead of dividing each value (codes differ from
#: ``x / scale`` only where the product lands exactly on an FP8 rounding boundary; H200, M = 17,776,
#: K = 3072 with smoothing + low-rank: 0.131 ms against 0.137);
#: ``evict``: L2 hints, keep the rows for the second sweep and drop them after it;
#: ``reverse``: the second sweep runs from the last tile back, so it starts on the tiles the first sweep read
#: last (the likeliest still in L2 when a program's rows do not all fit).
#: Measured and removed from the code (2026-12-02/03, README "Deploying"): ``prefetch`` (the next tile's load
#: issued before this tile's math: 0.22 ms) and ``split`` (``H_128 = H_4 (x) H_32``: 0.167 against 0.106 ms).
SCHEDULE = {"recip": True, "evict": False, "reverse": False}


#: the launch configurations the autotuner chooses from (rows per program, warps, pipeline stages)
CONFIGS = tuple({"BM": bm, "num_warps": w, "num_stages": st}
                for bm, w, st in ((16, 4, 3), (32, 4, 3), (32, 8, 4), (64, 4, 3), (64, 8, 2), (64, 8, 4), (128, 4, 3),
                                  (128, 8, 2), (128, 8, 3)))


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
    def _act(x, ACT: tl.constexpr):
        """The input activation on a loaded tile: ``ACT`` 1 = tanh-approximated GELU in float32, rounded to
        x's dtype (torch's ``gelu(approximate="tanh")``), as ``x / (1 + exp(-2u))`` (no cancellation for u < 0)."""
        if ACT == 1:
            xf = x.to(tl.float32)
            inner = 0.7978845608028654 * (xf + 0.044715 * (xf * xf * xf))
            x = (xf / (1.0 + tl.exp(-2.0 * inner))).to(x.dtype)
        return x

    @triton.jit
    def _transform(x, c_ptr, h, k0, cols, K, norm, ROT: tl.constexpr, COL: tl.constexpr):
        """A loaded (activated) tile -> ``(xd, y)``: ``xd = x's dtype(x * col)`` (what the low-rank factor sees)
        and ``y = xd H / sqrt(128)`` in float32 on the tensor cores (``ROT``; exact products) or ``xd``."""
        if COL:
            x = (x * tl.load(c_ptr + k0 + cols, mask=(k0 + cols) < K, other=0.0)[None, :]).to(x.dtype)
        if ROT:
            y = tl.dot(x.to(h.dtype), h) * norm
        else:
            y = x.to(tl.float32)
        return x, y

    @triton.jit
    def _sweep1(x, c_ptr, h, d_ptr, amax, t, k0, cols, K, norm, ROT: tl.constexpr, COL: tl.constexpr,
                R: tl.constexpr):
        """One output's first-sweep work on a tile: its row maxima and, with ``R > 0`` (``lr_down``
        zero-padded to ``R`` rows), ``t += xd lr_down[:, k0 : k0 + BK]^T`` (bf16 products, fp32 sums)."""
        xd, y = _transform(x, c_ptr, h, k0, cols, K, norm, ROT, COL)
        amax = tl.maximum(amax, tl.max(tl.abs(y), axis=1))
        if R > 0:
            ranks = tl.arange(0, R)
            dn = tl.load(d_ptr + ranks[:, None] * K + (k0 + cols)[None, :], mask=((k0 + cols) < K)[None, :], other=0.0)
            t = t + tl.dot(xd.to(tl.bfloat16), tl.trans(dn))
        return amax, t

    @triton.jit
    def _row_scale(amax, t, s_ptr, rows, rmask, R: tl.constexpr, RECIP: tl.constexpr):
        """One output's row scales ``max(amax_row([xr, t]), 1e-12) / 448`` (stored) and what sweep 2
        multiplies by: one correctly rounded reciprocal per row (``RECIP``; codes differ from ``x / scale``
        only at rounding ties, rare) or the scale itself (then divided)."""
        if R > 0:
            amax = tl.maximum(amax, tl.max(tl.abs(t), axis=1))
        scale = tl.maximum(amax, 1e-12) / 448.0
        tl.store(s_ptr + rows, scale, mask=rmask)
        if RECIP:
            inv = tl.fdiv(tl.full(scale.shape, 1.0, tl.float32), scale, ieee_rounding=True)
        else:
            inv = scale
        return scale, inv

    @triton.jit
    def _sweep2(x, c_ptr, h, q_ptr, inv, scale, rows, rmask, k0, cols, K, stride_q, norm, ROT: tl.constexpr,
                COL: tl.constexpr, RECIP: tl.constexpr):
        """One output's FP8 codes of the tile at column ``k0`` (row scale ``scale``, or its reciprocal ``inv``)."""
        xd, y = _transform(x, c_ptr, h, k0, cols, K, norm, ROT, COL)
        if RECIP:
            q = tl.clamp(y * inv[:, None], -448.0, 448.0)
        else:
            q = tl.clamp(tl.fdiv(y, scale[:, None], ieee_rounding=True), -448.0, 448.0)
        tl.store(q_ptr + rows[:, None] * stride_q + (k0 + cols)[None, :], q.to(tl.float8e4nv),
                 mask=rmask[:, None] & ((k0 + cols) < K)[None, :])

    @triton.jit
    def _store_t(t, scale, q_ptr, rows, rmask, K, stride_q, R: tl.constexpr):
        """The low-rank columns after the ``K`` codes: ``[t_hi, t_lo, t_hi]`` (the GEMM's B side is
        ``[B_hi, B_hi, B_lo]``), ``t_hi = e4m3(t / scale)``, ``t_lo = e4m3(t / scale - t_hi)``."""
        if R > 0:
            ranks = tl.arange(0, R)
            tq = tl.fdiv(t, scale[:, None], ieee_rounding=True)
            hv = _e4m3_round(tl.clamp(tq, -448.0, 448.0))  # exactly an e4m3 value: its conversion is exact
            hi = hv.to(tl.float8e4nv)
            lo = tl.clamp(tq - hv, -448.0, 448.0).to(tl.float8e4nv)
            base = q_ptr + rows[:, None] * stride_q + (K + ranks)[None, :]
            tl.store(base, hi, mask=rmask[:, None])
            tl.store(base + R, lo, mask=rmask[:, None])
            tl.store(base + 2 * R, hi, mask=rmask[:, None])

    @triton.autotune(configs=[triton.Config({"BM": c["BM"]}, num_warps=c["num_warps"], num_stages=c["num_stages"])
                              for c in CONFIGS],
                     key=["K", "G", "ROT", "R0", "R1", "R2", "ACT", "RECIP", "EV1", "REV"])
    @triton.jit
    def _rot_quant_kernel(x_ptr, h_ptr, c0, c1, c2, d0, d1, d2, q0, q1, q2, s0, s1, s2, M, K, stride_x,
                          sq0, sq1, sq2, norm, G: tl.constexpr, ROT: tl.constexpr, COL0: tl.constexpr,
                          COL1: tl.constexpr, COL2: tl.constexpr, R0: tl.constexpr, R1: tl.constexpr,
                          R2: tl.constexpr, ACT: tl.constexpr, RECIP: tl.constexpr, EV1: tl.constexpr,
                          EV2: tl.constexpr, REV: tl.constexpr, BM: tl.constexpr, BK: tl.constexpr):
        """``G`` (1-3) outputs of one input: each tile of ``x`` is loaded once per sweep and serves every output
        (``c*``: column multipliers, ``d*``: low-rank factors padded to ``R*`` rows, ``q*``/``s*``: codes, row scales)."""
        pid = tl.program_id(0)
        rows = pid.to(tl.int64) * BM + tl.arange(0, BM)
        rmask = rows < M
        cols = tl.arange(0, BK)
        if ROT:
            h = tl.load(h_ptr + cols[:, None] * BK + cols[None, :])
        else:
            h = 0
        a0 = tl.zeros((BM,), dtype=tl.float32)
        a1 = tl.zeros((BM,), dtype=tl.float32)
        a2 = tl.zeros((BM,), dtype=tl.float32)
        t0 = tl.zeros((BM, R0 if R0 > 0 else 16), dtype=tl.float32)
        t1 = tl.zeros((BM, R1 if R1 > 0 else 16), dtype=tl.float32)
        t2 = tl.zeros((BM, R2 if R2 > 0 else 16), dtype=tl.float32)
        # sweep 1: row maxima (and the low-rank projections) of every output from one load per tile
        for k0 in range(0, K, BK):
            x = _act(_load_tile(x_ptr, rows, rmask, cols, k0, K, stride_x, EV1), ACT)
            a0, t0 = _sweep1(x, c0, h, d0, a0, t0, k0, cols, K, norm, ROT, COL0, R0)
            if G > 1:
                a1, t1 = _sweep1(x, c1, h, d1, a1, t1, k0, cols, K, norm, ROT, COL1, R1)
            if G > 2:
                a2, t2 = _sweep1(x, c2, h, d2, a2, t2, k0, cols, K, norm, ROT, COL2, R2)
        sc0, inv0 = _row_scale(a0, t0, s0, rows, rmask, R0, RECIP)
        if G > 1:
            sc1, inv1 = _row_scale(a1, t1, s1, rows, rmask, R1, RECIP)
        if G > 2:
            sc2, inv2 = _row_scale(a2, t2, s2, rows, rmask, R2, RECIP)
        # sweep 2: the same tiles again (from L2 where they stayed; REV: last tile first, the most
        # recently read ones), quantized
        last = ((K - 1) // BK) * BK
        for kk in range(0, K, BK):
            if REV:
                k0 = last - kk
            else:
                k0 = kk
            x = _act(_load_tile(x_ptr, rows, rmask, cols, k0, K, stride_x, EV2), ACT)
            _sweep2(x, c0, h, q0, inv0, sc0, rows, rmask, k0, cols, K, sq0, norm, ROT, COL0, RECIP)
            if G > 1:
                _sweep2(x, c1, h, q1, inv1, sc1, rows, rmask, k0, cols, K, sq1, norm, ROT, COL1, RECIP)
            if G > 2:
                _sweep2(x, c2, h, q2, inv2, sc2, rows, rmask, k0, cols, K, sq2, norm, ROT, COL2, RECIP)
        _store_t(t0, sc0, q0, rows, rmask, K, sq0, R0)
        if G > 1:
            _store_t(t1, sc1, q1, rows, rmask, K, sq1, R1)
        if G > 2:
            _store_t(t2, sc2, q2, rows, rmask, K, sq2, R2)

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


#: the most outputs one prologue launch computes from one input (an attention's q, k and v)
MAX_OUTPUTS = 3


def rotate_quantize_fp8_multi(x: torch.Tensor, outputs: Sequence[tuple[torch.Tensor | None, torch.Tensor | None]],
                              block: int = 0, act: int = ACT_NONE, schedule: dict | None = None,
                              config: dict | None = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`rotate_quantize_fp8` for several outputs of one input in one kernel: ``outputs`` lists each
    output's ``(col, lr_down)`` (an attention's q, k and v projections read the same ``x`` with their own
    smoothing, rotation signs and low-rank factors). Each tile of ``x`` is read once per sweep for all of
    them instead of once per output; each output's numbers are those of its own single call.

    Args:
        x: ``(M, K)`` bf16 or fp16 (CUDA for the kernel; otherwise the float reference per output).
        outputs: 1 .. :data:`MAX_OUTPUTS` pairs ``(col (K,) or None, lr_down (r, K) bf16 or None)``.
        block, act, schedule, config: as :func:`rotate_quantize_fp8` (shared by the outputs).
    Returns:
        per output ``(q (M, K + 3R) float8_e4m3fn, scale float32 (M,))``.
    """
    if not 1 <= len(outputs) <= MAX_OUTPUTS:
        raise ValueError(f"one prologue computes 1 to {MAX_OUTPUTS} outputs (got {len(outputs)})")
    if act not in (ACT_NONE, ACT_GELU_TANH):
        raise ValueError(f"unknown input activation code {act} (0: none, 1: gelu tanh)")
    if not available(x.device) or x.dtype not in (torch.bfloat16, torch.float16):
        return [rotate_quantize_fp8_reference(x, c, block, d, act) for c, d in outputs]
    sch = {**SCHEDULE, **(schedule or {})}
    if unknown := set(sch) - set(SCHEDULE):
        raise ValueError(f"unknown prologue schedule keys {sorted(unknown)} (known: {sorted(SCHEDULE)})")
    if block not in (0, ROT_BLOCK):
        raise ValueError(f"the fused kernel rotates in blocks of {ROT_BLOCK} (got {block})")
    x = x.contiguous()
    m, k = x.shape
    ranks = [0 if d is None else d.shape[0] for _, d in outputs]
    res, cs, ds = [], [], []
    for (col, d), r in zip(outputs, ranks):
        rp = _pad_rank(r)
        res.append((torch.empty((m, k + 3 * rp), device=x.device, dtype=FP8),
                    torch.empty((m,), device=x.device, dtype=torch.float32)))
        cs.append(col.to(device=x.device, dtype=torch.float32).contiguous() if col is not None else x)
        if r and r == rp and d.dtype == torch.bfloat16 and d.is_contiguous():
            ds.append(d)  # already R rows: no padded copy (two launches fewer per call)
        elif r:
            dp = torch.zeros((rp, k), device=x.device, dtype=torch.bfloat16)
            dp[:r] = d
            ds.append(dp)
        else:
            ds.append(x)
    if m == 0:
        return res
    # with low-rank columns the kernel takes its tensor-core path (the identity for block 0)
    rot = bool(block) or any(ranks)
    if block:
        h = sylvester(ROT_BLOCK, x.device, x.dtype)
    elif rot:
        h = torch.eye(ROT_BLOCK, device=x.device, dtype=x.dtype)
    else:
        h = x  # unused placeholder
    g = len(outputs)
    pad = lambda seq, fill: list(seq) + [fill] * (MAX_OUTPUTS - g)  # noqa: E731  (unused slots)
    qs, ss = pad([q for q, _ in res], x), pad([s for _, s in res], x)
    cols_, downs = pad(cs, x), pad(ds, x)
    strides = pad([q.stride(0) for q, _ in res], 0)
    flags = pad([c is not None for c, _ in outputs], False)
    rps = pad([_pad_rank(r) for r in ranks], 0)
    grid = lambda meta: (triton.cdiv(m, meta["BM"]),)  # noqa: E731  (rows per program: autotuned per K)
    kernel = _rot_quant_kernel if config is None else _rot_quant_kernel.fn
    kernel[grid](x, h, *cols_, *downs, *qs, *ss, m, k, x.stride(0), *strides,
                 float(ROT_BLOCK ** -0.5) if block else 1.0, G=g, ROT=rot, COL0=flags[0], COL1=flags[1],
                 COL2=flags[2], R0=rps[0], R1=rps[1], R2=rps[2], ACT=int(act), RECIP=bool(sch["recip"]),
                 EV1="evict_last" if sch["evict"] else "", EV2="evict_first" if sch["evict"] else "",
                 REV=bool(sch["reverse"]), BK=ROT_BLOCK, **(config or {}))
    return res


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
        schedule: overrides of :data:`SCHEDULE` (benchmarks).
        config: one launch configuration instead of the autotuner's choice, e.g.
            ``{"BM": 64, "num_warps": 8, "num_stages": 2}`` (tests run every configuration).
    Returns:
        ``(q (M, K + 3R) float8_e4m3fn, scale float32 (M,))``: ``q[:, :K] * scale ~= x R``, then the
        low-rank projections ``t`` as ``[t_hi, t_lo, t_hi]`` (``R`` = ``r`` padded to a power of two >= 16).
    """
    return rotate_quantize_fp8_multi(x, [(col, lr_down)], block, act, schedule, config)[0]


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
