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
DOVE's shape, same output bits up to fp rounding. With ``fixed_max=True`` (bf16 P) a
Cauchy-Schwarz bound of each row's scores stands in for the running row max: no max, no
rescaling of the output in the loop (8.95 -> 8.13 ms with 64-key tiles); tiles whose bound is
too large for that take the online softmax.
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
#: minimax (relative error) cubic for 2^f on [-0.5, 0.5]: max relative error 7.5e-5, 27x below
#: P's bf16 rounding (2^-9)
POLY_EXP2 = (0.9999281167984009, 0.6932609677314758, 0.24261054396629333, 0.05517132207751274)
#: ``exp`` modes of :func:`triton_int8_attention` -> the kernel's EXP code
EXP_MODES = {"f32": 0, "x2": 1, "poly4": 3, "poly2": 4, "poly1": 5, "ftz": 6, "poly8": 7, "poly16": 8}
#: EXP code -> exponentials per inline-asm call, the last of which takes the polynomial
POLY_PACK = {3: 4, 4: 2, 5: 1, 7: 8, 8: 16}


def _f32_hex(v: float) -> str:
    import struct

    return "0f%08X" % struct.unpack("<I", struct.pack("<f", v))[0]


def _poly_exp2_ptx(out: str, x: str) -> str:
    """PTX for ``out = 2^x`` (x <= 0) on the FMA and integer pipes, without the special-function
    unit (FlashAttention-4's trick): round x to j + f (f in [-0.5, 0.5]) by the 1.5 * 2^23 add,
    2^f by the cubic, then add j to the exponent field. x is clamped at -125 (-inf -> ~2e-38)."""
    c0, c1, c2, c3 = (_f32_hex(c) for c in POLY_EXP2)
    return (f"max.f32 t, {x}, {_f32_hex(-125.0)}; add.rn.f32 j, t, 0f4B400000; sub.rn.f32 f, j, 0f4B400000; "
            f"sub.rn.f32 f, t, f; fma.rn.f32 p, f, {c3}, {c2}; fma.rn.f32 p, p, f, {c1}; fma.rn.f32 p, p, f, {c0}; "
            f"shl.b32 j, j, 23; add.s32 {out}, p, j;")


def poly_exp2_reference(x: torch.Tensor) -> torch.Tensor:
    """The steps of :func:`_poly_exp2_ptx` in torch (float32, any device): ``x <= 0`` -> ``2^x``.
    For CPU tests of the constants and the exponent-field trick."""
    c0, c1, c2, c3 = POLY_EXP2
    t = x.float().clamp_min(-125.0)
    j = t + 12582912.0  # 1.5 * 2^23: round to nearest integer, kept in the low mantissa bits
    f = t - (j - 12582912.0)
    p = ((c3 * f + c2) * f + c1) * f + c0
    return (p.view(torch.int32) + (j.view(torch.int32) << 23)).view(torch.float32)


def exp2_mix_asm(pack: int) -> str:
    """Inline PTX for ``pack`` fp32 exponentials: the first ``pack - 1`` on the special-function
    unit (``ex2.approx.ftz``), the last by :func:`_poly_exp2_ptx` (``pack == 1``: all of them).
    Operands ``$0..$(pack-1)`` out, ``$pack..$(2 pack - 1)`` in."""
    body = " ".join(f"ex2.approx.ftz.f32 ${i}, ${pack + i};" for i in range(pack - 1))
    return "{ .reg .b32 t, j, f, p; " + body + " " + _poly_exp2_ptx(f"${pack - 1}", f"${2 * pack - 1}") + " }"


def triton_available() -> bool:
    return triton is not None and torch.cuda.is_available()


if triton is not None:

    @triton.jit
    def _quant_blocks(X, MEAN, QX, S, NORM, N, NB, sxb, sxh, sxn, H: tl.constexpr, D: tl.constexpr,
                      BLOCK: tl.constexpr, MUL: tl.constexpr, HAS_MEAN: tl.constexpr, HAS_NORM: tl.constexpr):
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
        if HAS_NORM:  # the block's largest row norm (of x after smoothing and MUL)
            tl.store(NORM + pid_bh * NB + pid_n, tl.sqrt(tl.max(tl.sum(x * x, 1), 0)))

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
    def _exp2_mix(x, ASM: tl.constexpr, CONS: tl.constexpr, PACK: tl.constexpr):
        """fp32 ``2^x`` (x <= 0) with one in ``PACK`` computed by a polynomial on the FMA pipe
        instead of the special-function unit (16 ops/clk/SM): :func:`exp2_mix_asm`."""
        return tl.inline_asm_elementwise(ASM, CONS, [x], dtype=tl.float32, is_pure=True, pack=PACK)

    @triton.jit
    def _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn,
                    offs_n, offs_d, D: tl.constexpr, BN: tl.constexpr, PV_FP8: tl.constexpr, MASK: tl.constexpr,
                    EXP: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr,
                    CONS: tl.constexpr, PACK: tl.constexpr, FIXED: tl.constexpr, ROWMMA: tl.constexpr):
        cols = start + offs_n
        if MASK:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :], mask=cols[:, None] < N, other=0.0)
        else:
            k = tl.load(k_base + cols[:, None] * D + offs_d[None, :])
        k_scale = tl.load(ks_ptr + start // BN)
        c = q_scale * k_scale
        if FIXED:  # m_i: a fixed upper bound of the row's scores; no running max, no rescaling
            if MAGIC:
                acc_i = tl.dot(q, tl.trans(k), acc=tl.full((q.shape[0], BN), 0x4B400000, tl.int32), out_dtype=tl.int32)
                x = acc_i.to(tl.float32, bitcast=True) * c - (12582912.0 * c + m_i)[:, None]
            else:
                x = tl.dot(q, tl.trans(k)).to(tl.float32) * c - m_i[:, None]
            m_new = m_i
        elif MAGIC:
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
        if FIXED:
            alpha = 1.0
        else:
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
            if EXP == 0 or EXP >= 3:
                if EXP == 0:
                    p32 = tl.math.exp2(x)
                else:
                    p32 = _exp2_mix(x, ASM, CONS, PACK)
                p = p32.to(v.dtype)  # fp16 or bf16: V's dtype
            else:
                p = _exp2(x, EXP)  # fp16 (EXP 1) or bf16 (EXP 2): V's dtype
            if ROWMMA:  # row sums on the tensor cores: P @ ones, accumulated in place (16 equal columns)
                ones = tl.full((BN, 16), 1.0, v.dtype)
                if FIXED:
                    l_i = tl.dot(p, ones, l_i)
                else:
                    l_i = l_i * alpha[:, None] + tl.dot(p, ones)
            elif EXP == 0 or EXP >= 3:
                if FIXED:
                    l_i = l_i + tl.sum(p32, 1)
                else:
                    l_i = l_i * alpha + tl.sum(p32, 1)
            else:
                l_i = l_i * alpha + tl.sum(p.to(tl.float32), 1)
            if FIXED:
                acc = tl.dot(p, v, acc)
            else:
                acc = acc * alpha[:, None] + tl.dot(p, v)
        return acc, l_i, m_new

    @triton.jit
    def _attn_loop(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, N, svn, offs_n, offs_d, D: tl.constexpr,
                   BN: tl.constexpr, PV_FP8: tl.constexpr, EXP: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr,
                   CONS: tl.constexpr, PACK: tl.constexpr, FIXED: tl.constexpr, ROWMMA: tl.constexpr):
        n_full = (N // BN) * BN
        for start in range(0, n_full, BN):  # full blocks: no masks
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, start, N, svn, offs_n,
                                        offs_d, D, BN, PV_FP8, False, EXP, MAGIC, ASM, CONS, PACK, FIXED, ROWMMA)
        if n_full < N:
            acc, l_i, m_i = _attn_block(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, n_full, N, svn, offs_n,
                                        offs_d, D, BN, PV_FP8, True, EXP, MAGIC, ASM, CONS, PACK, FIXED, ROWMMA)
        return acc, l_i, m_i

    @triton.jit
    def _int8_attn_fwd(Q, K, V, QS, KS, VS, O, NQ, N, NBQ, NBK, svb, svh, svn, sob, soh, son,
                       H: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                       PV_FP8: tl.constexpr, EXP: tl.constexpr, MAGIC: tl.constexpr, ASM: tl.constexpr,
                       CONS: tl.constexpr, PACK: tl.constexpr, KN, FIXED: tl.constexpr, LIMIT: tl.constexpr,
                       ROWMMA: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_bh = tl.program_id(1)
        b = pid_bh // H
        h = pid_bh % H
        offs_m = pid_m * BM + tl.arange(0, BM)
        offs_n = tl.arange(0, BN)
        offs_d = tl.arange(0, D)
        q = tl.load(Q + pid_bh * NQ * D + offs_m[:, None] * D + offs_d[None, :], mask=offs_m[:, None] < NQ, other=0.0)
        q_scale = tl.load(QS + pid_bh * NBQ + pid_m)
        m_i = tl.full((BM,), float("-inf"), tl.float32)
        if ROWMMA:
            l_i = tl.zeros((BM, 16), tl.float32)
        else:
            l_i = tl.zeros((BM,), tl.float32)
        acc = tl.zeros((BM, D), tl.float32)
        k_base = K + pid_bh * N * D
        v_base = V + b * svb + h * svh
        ks_ptr = KS + pid_bh * NBK
        if FIXED:
            # Cauchy-Schwarz: s_ij <= |q_i| max_j |k_j| (exp2 domain, from the quantization pass). Softmax
            # is invariant to a per-row offset: with (bound - 64) as a fixed "row max", P lies in
            # [2^(64 - 2 bound), 2^64] (normal floats; acc and l far from overflow) whenever
            # bound <= LIMIT, and the loop needs no running max and no rescaling of acc.
            qf = q.to(tl.float32) * q_scale
            bound = tl.sqrt(tl.sum(qf * qf, 1)) * tl.load(KN + pid_bh)
            if tl.max(bound, 0) <= LIMIT:
                acc, l_i, m_i = _attn_loop(acc, l_i, bound - 64.0, q, q_scale, k_base, v_base, ks_ptr, N, svn, offs_n,
                                           offs_d, D, BN, PV_FP8, EXP, MAGIC, ASM, CONS, PACK, True, ROWMMA)
            else:
                acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, N, svn, offs_n,
                                           offs_d, D, BN, PV_FP8, EXP, MAGIC, ASM, CONS, PACK, False, ROWMMA)
        else:
            acc, l_i, m_i = _attn_loop(acc, l_i, m_i, q, q_scale, k_base, v_base, ks_ptr, N, svn, offs_n,
                                       offs_d, D, BN, PV_FP8, EXP, MAGIC, ASM, CONS, PACK, False, ROWMMA)
        if ROWMMA:
            out = acc / (tl.sum(l_i, 1) * 0.0625)[:, None]
        else:
            out = acc / l_i[:, None]
        if PV_FP8:
            out = out * (tl.load(VS + pid_bh * D + offs_d)[None, :] / 256.0)
        tl.store(O + b * sob + h * soh + offs_m[:, None] * son + offs_d[None, :], out.to(O.dtype.element_ty),
                 mask=offs_m[:, None] < NQ)


def quantize_qk(x: torch.Tensor, block: int, mul: float, smooth: bool,
                norms: bool = False) -> tuple[torch.Tensor, ...]:
    """``x: (B, H, N, D)`` -> int8 ``(B*H, N, D)`` codes and ``(B*H, ceil(N/block))``
    scales, one pass; with ``norms``, also the largest row norm per block ``(B*H, ceil(N/block))``."""
    b, h, n, d = x.shape
    if x.stride(-1) != 1:
        x = x.contiguous()
    nb = triton.cdiv(n, block)
    mean = (x.mean(dim=-2, dtype=torch.float32).reshape(b * h, d).contiguous() if smooth
            else x.new_empty(1, dtype=torch.float32))
    q = torch.empty(b * h, n, d, dtype=torch.int8, device=x.device)
    s = torch.empty(b * h, nb, dtype=torch.float32, device=x.device)
    nrm = torch.empty(b * h, nb, dtype=torch.float32, device=x.device) if norms else s
    _quant_blocks[(nb, b * h)](x, mean, q, s, nrm, n, nb, x.stride(0), x.stride(1), x.stride(2), H=h, D=d,
                               BLOCK=block, MUL=mul, HAS_MEAN=smooth, HAS_NORM=norms, num_warps=4)
    return (q, s, nrm) if norms else (q, s)


def triton_int8_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, smooth_k: bool = True,
                          pv: str = "fp16", bm: int = DEFAULT_BM, bn: int = DEFAULT_BN, num_warps: int = 8,
                          num_stages: int = 3, exp: str = "f32", magic: bool = False,
                          fixed_max: bool = False, fixed_limit: float = 80.0, rowsum_mma: bool = False) -> torch.Tensor:
    """``q: (B, H, Nq, D)``, ``k, v: (B, H, N, D)`` CUDA tensors -> ``(B, H, Nq, D)`` in q's dtype.

    ``pv``: ``"fp16"`` (P and V in fp16), ``"bf16"`` (P in bf16, V read in place when bf16: no copy) or
    ``"fp8"``. ``exp``: ``"f32"`` (fp32 ``ex2``, then P rounded to 16 bits) or ``"x2"`` (packed 16-bit
    ``ex2``: half the special-function work; P's precision is unchanged, its exponent argument is
    rounded to 16 bits), or ``"poly1"`` / ``"poly2"`` / ``"poly4"`` / ``"poly8"`` / ``"poly16"`` (all, 1 in 2, ...,
    1 in 16 of the fp32 exponentials by a cubic on the FMA pipe, :func:`exp2_mix_asm`). ``magic``: int32 scores to fp32 through the 1.5 * 2^23 bit trick instead of
    I2F conversions (exact). ``fixed_max``: a Cauchy-Schwarz bound of each row's scores replaces the running row max
    (no max, no rescaling in the loop; blocks whose bound exceeds ``fixed_limit`` (exp2 domain) take
    the usual online softmax). ``rowsum_mma``: the softmax denominators as ``P @ ones`` on the tensor
    cores instead of one add per score. bench/attention_kernel.py measures each choice; CUDA_SETTINGS in
    :mod:`lsgq_compiler.kernels.attention` holds the fastest.
    """
    if rowsum_mma and pv == "fp8":
        raise ValueError("rowsum_mma=True needs pv='fp16' or 'bf16'")
    if fixed_max and pv != "bf16":
        raise ValueError(f"fixed_max=True needs pv='bf16' (got pv={pv!r}): P may reach 2^64, beyond fp16's "
                         "range; use pv='bf16' or fixed_max=False")
    b, h, nq, d = q.shape
    n = k.shape[-2]
    magic = magic and d * 127 * 127 < 2 ** 22  # the bit trick needs |s| < 2^22 (head dim <= 260)
    qq, qs = quantize_qk(q, bm, scale * LOG2E, False)  # exp2-domain softmax
    if fixed_max:
        kq, ks, kn = quantize_qk(k, bn, 1.0, smooth_k, norms=True)
        kn = kn.amax(dim=1).contiguous()  # (B*H,) largest |k| per head
    else:
        kq, ks = quantize_qk(k, bn, 1.0, smooth_k)
        kn = ks
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
    out = torch.empty(q.shape, dtype=q.dtype, device=q.device)  # contiguous like the fake (q may be a permuted view)
    grid = (triton.cdiv(nq, bm), b * h)
    if exp not in EXP_MODES:
        raise ValueError(f"exp={exp!r}: expected one of {sorted(EXP_MODES)}")
    exp_mode = EXP_MODES[exp]
    if exp_mode == 1 and pv == "bf16":
        exp_mode = 2  # packed bf16x2 exponentials
    pack = POLY_PACK.get(exp_mode, 1)
    asm = exp2_mix_asm(pack) if exp_mode in POLY_PACK else "ex2.approx.ftz.f32 $0, $1;" if exp_mode == 6 else ""
    cons = ",".join(["=r"] * pack + ["r"] * pack)
    _int8_attn_fwd[grid](qq, kq, v8, qs, ks, vs, out, nq, n, qs.shape[1], ks.shape[1], svb, svh, svn,
                         out.stride(0), out.stride(1), out.stride(2),
                         H=h, D=d, BM=bm, BN=bn, PV_FP8=pv == "fp8", EXP=exp_mode, MAGIC=magic, ASM=asm, CONS=cons, PACK=pack,
                         KN=kn, FIXED=fixed_max, LIMIT=float(fixed_limit), ROWMMA=rowsum_mma,
                         num_warps=num_warps, num_stages=num_stages)
    return out
