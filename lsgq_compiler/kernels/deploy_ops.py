"""Deploy kernels for quantized linears, as ``torch.library`` custom ops with fake implementations.

Shape notation: ``x: (M, K)`` activations (the Python wrappers accept ``(..., K)`` and flatten),
``W: (N, K)`` weight, ``G = K // 128`` groups of 128 along ``K``.

Formats and the kernels that run them:

- ``lsgq::int4_fp8_linear``: int4 weights (symmetric, groups of 128) x FP8 e4m3 activations per
  row. On sm_90 with ``mslk-cuda`` (``pip install lsgq-compiler[cuda]``): the CUTLASS kernel
  ``torch.ops.mslk.f8i4bf16_shuffled`` (what torchao 0.18's
  ``Float8DynamicActivationInt4WeightConfig`` calls). Its scale format: one float32 scale per
  output row (``row_scale``) times one FP8 e4m3 scale per group (``group_scale``, stored
  ``(G, N)``), and the int4 code times the group scale is looked up as an FP8 value (the kernel's
  lookup table), so the weight the kernel multiplies is
  ``row_scale[n] * e4m3(code * e4m3_group_scale)``. :func:`quantize_weight_int4_g128` chooses
  bf16 group scales that this format represents exactly, and :func:`dequantize_int4_g128` is
  that weight; the reference path computes it in float32.
- ``lsgq::rot_fp8_linear``: FP8 e4m3 per-row activations, rotated first (block-Hadamard) when
  the layer is, times a weight of FP8 e4m3 per row or of int4 codes per row (``int4r_fp8``:
  uint8 nibbles, unpacked to FP8 in one pass, exact). On sm_89+ with Triton: the fused
  rotate-and-quantize prologue (:mod:`.fp8_prologue`, blocks of 128; other blocks rotate by
  :func:`lsgq_compiler.hadamard.rotate_matmul` first) and ``torch._scaled_mm`` rowwise.
- ``lsgq::rot_fp8_multi_linear``: several ``rot_fp8_linear`` layers of one input (an attention's q, k, v)
  with one prologue that reads the input once for all of them, then one GEMM each; same outputs.
- ``lsgq::fp8_linear``: FP8 e4m3 per-row weights x FP8 per-row activations; ``torch._scaled_mm``
  rowwise on sm_89+, float reference elsewhere.
- ``lsgq::int8_linear``: int8 per-row weights x dynamic int8 per-token activations;
  ``torch._int_mm`` (CUDA and CPU) when ``M > 16``, exact float64 reference otherwise.
- ``lsgq::int4_weight_linear``: int4 weight-only (bf16 activations, bf16 group scales, weight =
  ``code * scale``): dequantize to bf16 + bf16 GEMM on every device (a fallback, no packed-int4
  GEMM is called; :func:`available_kernels` says so).

Activation numerics (all FP8 kernels, as mslk's ``quantize_fp8_row``): ``scale = max(amax, 1e-12)
/ 448`` in float32, ``x_fp8 = e4m3(clamp(x / scale, -448, 448))``.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch

GROUP = 128
FP8_MAX = 448.0
_FP8_EPS = 1e-12
_INT8_EPS = 1e-8
FP8 = torch.float8_e4m3fn
MSLK_HINT = "pip install lsgq-compiler[cuda] (the mslk-cuda package, built for torch 2.11 + CUDA 13)"


# ----------------------------------------------------------------------------- availability
@functools.lru_cache(maxsize=None)
def _mslk_ops() -> tuple[bool, str]:
    """(available, reason) for mslk's f8i4bf16_shuffled / preshuffle_i4 / quantize_fp8_row."""
    try:
        import mslk  # noqa: F401
        import mslk.quantize.triton.fp8_quantize  # noqa: F401
    except Exception as e:  # ImportError, or a binary built for another torch
        return False, f"mslk not importable ({type(e).__name__}: {str(e)[:120]}); {MSLK_HINT}"
    ops = getattr(torch.ops, "mslk", None)
    for name in ("f8i4bf16_shuffled", "preshuffle_i4"):
        if ops is None or not hasattr(ops, name):
            return False, f"mslk lacks torch.ops.mslk.{name}; {MSLK_HINT}"
    return True, "mslk"


def _cap(device: torch.device | str) -> tuple[int, int] | None:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def available_kernels(device: torch.device | str = "cpu") -> dict[str, str]:
    """Which real kernel each op runs on ``device``, or why it falls back to the float reference."""
    cap = _cap(device)
    out: dict[str, str] = {}
    if cap is None:
        ref = f"reference (float) on {torch.device(device).type}"
        out["int4_fp8_linear"] = ref + ": no int4 x FP8 GEMM off CUDA sm_90"
        out["fp8_linear"] = ref + ": torch._scaled_mm needs CUDA sm_89+"
        out["rot_fp8_linear"] = ref + ": the Triton prologue and torch._scaled_mm need CUDA sm_89+"
        out["int8_linear"] = "torch._int_mm (CPU) when M > 16, else exact reference"
        out["int4_weight_linear"] = "fallback: dequantize to bf16 + GEMM"
        return out
    ok, why = _mslk_ops()
    if cap[0] == 9 and ok:
        out["int4_fp8_linear"] = "mslk f8i4bf16_shuffled (CUTLASS, sm_90a) + mslk triton quantize_fp8_row"
    elif cap[0] != 9:
        out["int4_fp8_linear"] = f"reference (float): f8i4bf16_shuffled is sm_90 only, this GPU is sm_{cap[0]}{cap[1]}"
    else:
        out["int4_fp8_linear"] = f"reference (float): {why}"
    out["fp8_linear"] = ("torch._scaled_mm rowwise (cuBLASLt FP8)" if cap >= (8, 9)
                         else f"reference (float): FP8 needs sm_89+, this GPU is sm_{cap[0]}{cap[1]}")
    from . import fp8_prologue

    out["rot_fp8_linear"] = ("Triton rotate+quantize prologue (+ int4 unpack) + torch._scaled_mm rowwise"
                             if fp8_prologue.available(device)
                             else "reference (float): needs Triton and sm_89+")
    out["int8_linear"] = "torch._int_mm (cuBLASLt int8) when M > 16 and K, N % 8 == 0, else exact reference"
    out["int4_weight_linear"] = "fallback: dequantize to bf16 + bf16 GEMM (no packed-int4 GEMM called)"
    return out


# ----------------------------------------------------------------------------- activations
def act_fp8_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 per row of ``x: (..., K)``: ``(x_fp8 (..., K), scale float32 (...))``."""
    xf = x.float()
    scale = xf.abs().amax(-1).clamp_min(_FP8_EPS) / FP8_MAX
    return (xf / scale[..., None]).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def quantize_act_fp8_row(x: torch.Tensor) -> torch.Tensor:
    """What the FP8 kernels multiply for ``x: (..., K)``: ``e4m3(x / scale) * scale``, float32."""
    q, s = act_fp8_row(x)
    return q.float() * s[..., None]


def act_int8_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 per token of ``x: (..., K)``: ``(codes int8, scale float32 (...))``,
    ``scale = max(amax / 127, 1e-8)``."""
    xf = x.float()
    scale = (xf.abs().amax(-1) / 127.0).clamp_min(_INT8_EPS)
    return torch.round(xf / scale[..., None]).clamp(-128, 127).to(torch.int8), scale


# ----------------------------------------------------------------------------- weights
def int4_kernel_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's scale format for bf16 group scales ``(N, G)``:
    ``(row_scale float32 (N,), group_scale float8_e4m3fn (N, G))``, row = max group scale."""
    s = scales.float()
    row = s.amax(-1).clamp_min(1e-30)
    return row, (s / row[:, None]).to(FP8)


def quantize_weight_int4_g128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 in groups of 128 along K, on the grid the sm_90 kernel runs.

    ``s = amax / 7`` per group, snapped to the kernel's format (``row * e4m3(s / row)``, row =
    the largest of the row's scales) and stored in bf16, which maps back to the same FP8 value;
    ``code = clamp(round(w / s), -8, 7)``.

    Args:
        w: ``(N, K)`` float, ``K % 128 == 0``.
    Returns:
        ``(codes int8 (N, K) in [-8, 7], scales bf16 (N, K // 128))``.
    """
    n, k = w.shape
    if k % GROUP:
        raise ValueError(f"int4 groups of {GROUP} need in_features % {GROUP} == 0, got {k}")
    wg = w.detach().float().reshape(n, k // GROUP, GROUP)
    s = (wg.abs().amax(-1) / 7.0).clamp_min(1e-8).to(torch.bfloat16).float()
    row = s.amax(-1).to(torch.bfloat16).float()
    snapped = ((s / row[:, None]).to(FP8).float() * row[:, None]).to(torch.bfloat16)
    snapped = torch.where(snapped > 0, snapped, s.to(torch.bfloat16))  # fp8 underflow: keep the bf16 scale
    codes = torch.round(wg / snapped.float()[..., None]).clamp(-8, 7).to(torch.int8)
    return codes.reshape(n, k), snapped


def dequantize_int4_g128(codes: torch.Tensor, scales: torch.Tensor, kernel: str = "fp8") -> torch.Tensor:
    """The float32 ``(N, K)`` weight a kernel multiplies, from ``codes (N, K)``, ``scales bf16 (N, G)``.

    ``kernel="fp8"`` (int4 x FP8, sm_90 lookup table): ``row * e4m3(code * e4m3(s / row))``;
    ``kernel="bf16"`` (int4 weight-only): ``code * s``.
    """
    n, k = codes.shape
    c = codes.float().reshape(n, k // GROUP, GROUP)
    if kernel == "bf16":
        return (c * scales.float()[..., None]).reshape(n, k)
    if kernel != "fp8":
        raise ValueError(f"kernel must be 'fp8' or 'bf16', got {kernel!r}")
    row, gs = int4_kernel_scales(scales)
    lut = (c * gs.float()[..., None]).to(FP8).float()
    return (lut * row[:, None, None]).reshape(n, k)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``codes int8 (N, K)`` in [-8, 7] -> ``int8 (N, K // 2)``: even k in the low nibble."""
    lo = torch.bitwise_and(codes[:, ::2], 0xF)
    hi = torch.bitwise_left_shift(codes[:, 1::2], 4)
    return torch.bitwise_or(lo, hi).to(torch.int8).contiguous()


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: ``int8 (N, K // 2)`` -> ``codes int8 (N, K)``."""
    lo = torch.bitwise_right_shift(torch.bitwise_left_shift(packed, 4), 4)  # sign-extends int8
    hi = torch.bitwise_right_shift(packed, 4)
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def pack_int4_for_cuda(codes: torch.Tensor, scales: torch.Tensor) -> dict[str, torch.Tensor]:
    """Plain tensors (safetensors-savable) for ``int4_fp8_linear``, in the kernel's scale format.

    Returns ``{"qweight": int8 (N, K // 2) nibble-packed, "group_scale": float8_e4m3fn (G, N),
    "row_scale": float32 (N,)}``. :func:`to_kernel_layout` shuffles them for mslk on the GPU
    (at load: a permutation, ``torch.ops.mslk.preshuffle_i4``).
    """
    row, gs = int4_kernel_scales(scales)
    return {"qweight": pack_int4(codes), "group_scale": gs.t().contiguous(), "row_scale": row.contiguous()}


def to_kernel_layout(packed: dict[str, torch.Tensor], device: torch.device | str) -> dict:
    """Move :func:`pack_int4_for_cuda` tensors to ``device``; on sm_90 with mslk, preshuffle them.

    Adds ``"shuffled"`` (a Python bool, a constant under torch.compile): True = mslk preshuffled
    layout (only the kernel reads it), False = plain (reference path).
    """
    out: dict = {k: v.to(device) for k, v in packed.items() if k != "shuffled"}
    cap = _cap(device)
    if cap is not None and cap[0] == 9 and _mslk_ops()[0]:
        wq, gs = torch.ops.mslk.preshuffle_i4(out["qweight"], out["group_scale"])
        out.update(qweight=wq, group_scale=gs, shuffled=True)
    else:
        out["shuffled"] = False
    return out


def quantize_weight_fp8_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 per output row: ``(w_fp8 (N, K), scale float32 (N,))``, ``scale = max(amax, 1e-12) / 448``."""
    return act_fp8_row(w.detach())


def quantize_weight_int8_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``(codes int8 (N, K), scale float32 (N,))``, ``scale = amax / 127``."""
    return act_int8_token(w.detach())


# ----------------------------------------------------------------------------- ops
def _bias_out(y: torch.Tensor, bias: Optional[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    if bias is not None:
        y = y + bias.float()
    return y.to(dtype)


@torch.library.custom_op("lsgq::int4_fp8_linear", mutates_args=())
def _int4_fp8_linear(x: torch.Tensor, qweight: torch.Tensor, group_scale: torch.Tensor, row_scale: torch.Tensor,
                     bias: Optional[torch.Tensor], shuffled: bool) -> torch.Tensor:
    """int4 (groups of 128) x FP8 rows; ``x (M, K)`` -> ``(M, N)`` in x's dtype."""
    if shuffled:  # mslk layout: only the kernel can read it
        xq, xs = _mslk_quantize_fp8_row(x)
        y = torch.ops.mslk.f8i4bf16_shuffled(xq, qweight, xs, row_scale, group_scale)
        return y.to(x.dtype) if bias is None else (y + bias).to(x.dtype)
    xq, xs = act_fp8_row(x)
    codes = unpack_int4(qweight).float()
    n, k = codes.shape
    lut = (codes.reshape(n, k // GROUP, GROUP) * group_scale.t().float()[..., None]).to(FP8).float()
    acc = xq.float() @ lut.reshape(n, k).t()
    return _bias_out(acc * xs[:, None] * row_scale[None, :], bias, x.dtype)


@_int4_fp8_linear.register_fake
def _(x, qweight, group_scale, row_scale, bias, shuffled):
    return x.new_empty((x.shape[0], row_scale.shape[0]))


def _mslk_quantize_fp8_row(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from mslk.quantize.triton.fp8_quantize import quantize_fp8_row

    return quantize_fp8_row(x)


def _rows_of(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(-1, x.shape[-1])


def int4_fp8_linear(x: torch.Tensor, w: dict[str, torch.Tensor], bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x (..., K)`` @ int4 weight ``w`` (from :func:`pack_int4_for_cuda` / :func:`to_kernel_layout`)
    -> ``(..., N)``. Flattens to 2-D for the op (torch.compile-safe)."""
    shuffled = bool(w.get("shuffled", False))
    y = torch.ops.lsgq.int4_fp8_linear(_rows_of(x), w["qweight"], w["group_scale"], w["row_scale"], bias, shuffled)
    return y.reshape(*x.shape[:-1], y.shape[-1])


@torch.library.custom_op("lsgq::fp8_linear", mutates_args=())
def _fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor]) -> torch.Tensor:
    """FP8 rowwise W8A8; ``x (M, K)``, ``w_fp8 (N, K)``, ``w_scale (N,)`` -> ``(M, N)``."""
    cap = _cap(x.device)
    n, k = w_fp8.shape
    if cap is not None and cap >= (8, 9) and k % 16 == 0 and n % 16 == 0 and x.dtype == torch.bfloat16:
        if cap[0] == 9 and _mslk_ops()[0]:
            xq, xs = _mslk_quantize_fp8_row(x)
        else:
            xq, xs = act_fp8_row(x)
        return torch._scaled_mm(xq, w_fp8.t(), scale_a=xs.reshape(-1, 1).float(), scale_b=w_scale.reshape(1, -1),
                                bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16)
    xq, xs = act_fp8_row(x)
    acc = xq.float() @ w_fp8.float().t()
    return _bias_out(acc * xs[:, None] * w_scale[None, :], bias, x.dtype)


@_fp8_linear.register_fake
def _(x, w_fp8, w_scale, bias):
    return x.new_empty((x.shape[0], w_fp8.shape[0]))


def fp8_linear(x: torch.Tensor, w_fp8: torch.Tensor, w_scale: torch.Tensor,
               bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x (..., K)`` -> ``(..., N)`` through ``lsgq::fp8_linear``."""
    y = torch.ops.lsgq.fp8_linear(_rows_of(x), w_fp8, w_scale, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def _rot_fp8_gemms(x: torch.Tensor, layers: list[tuple], block: int, act: int) -> list[torch.Tensor]:
    """The body of ``lsgq::rot_fp8_linear`` / ``rot_fp8_multi_linear``: ``x (M, K)`` times each of ``layers``
    = ``(weight, w_scale, bias, col, lr_down, lr_up)``, one prologue for all of them where the kernel runs."""
    from lsgq_compiler.hadamard import rotate_matmul

    from . import fp8_prologue as fp

    k = x.shape[1]
    cap = _cap(x.device)
    if cap is not None and cap >= (8, 9) and fp.available(x.device) and k % 16 == 0 \
            and all(w.shape[0] % 16 == 0 for w, *_ in layers) and x.dtype == torch.bfloat16:
        if block and block != fp.ROT_BLOCK:  # other blocks: scale and rotate by matmuls first, per layer
            out = []
            xa = fp.apply_act(x, act)
            ones = x.new_ones((k,))
            for w, ws, b, col, down, up in layers:
                xd = xa if col is None else (xa.float() * col).to(x.dtype)
                if down is not None:  # t = xd lr_down^T = (xd R)(lr_down R)^T: the prologue sees xd R
                    down = rotate_matmul(down, ones, block)
                out += _rot_fp8_gemms(rotate_matmul(xd, ones, block), [(w, ws, b, None, down, up)], 0, 0)
            return out
        quant = fp.rotate_quantize_fp8_multi(x, [(col, down) for _, _, _, col, down, _ in layers], block, act)
        out = []
        for (weight, w_scale, bias, _, _, lr_up), (xq, xs) in zip(layers, quant):
            w = fp.unpack_int4_fp8(weight, lr_up) if weight.dtype == torch.uint8 else weight
            if w.shape[1] != xq.shape[1]:
                w = fp._append_rank_cols(w, lr_up)
            out.append(torch._scaled_mm(xq, w.t(), scale_a=xs.reshape(-1, 1), scale_b=w_scale.reshape(1, -1).float(),
                                        bias=None if bias is None else bias.to(torch.bfloat16), out_dtype=torch.bfloat16))
        return out
    out = []
    for weight, w_scale, bias, col, lr_down, lr_up in layers:
        xq, xs = fp.rotate_quantize_fp8_reference(x, col, block, lr_down, act)
        if weight.dtype == torch.uint8:
            w = fp.unpack_int4_fp8_reference(weight, lr_up)
        else:
            w = weight if lr_up is None or weight.shape[1] == xq.shape[1] else fp._append_rank_cols(weight, lr_up)
        acc = xq.float() @ w.float().t()
        out.append(_bias_out(acc * xs[:, None] * w_scale.float()[None, :], bias, x.dtype))
    return out


@torch.library.custom_op("lsgq::rot_fp8_linear", mutates_args=())
def _rot_fp8_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor],
                    col: Optional[torch.Tensor], block: int, lr_down: Optional[torch.Tensor] = None,
                    lr_up: Optional[torch.Tensor] = None, act: int = 0) -> torch.Tensor:
    """``x (M, K)`` -> ``(M, N)`` (x's dtype; the kernel path takes bf16): ``x <- act(x)`` (``act`` 1: the
    preceding tanh-GELU, :func:`.fp8_prologue.apply_act`, fused into the prologue's load), ``xd = bf16(x * col)`` (``col (K,)``: rotation signs times
    ``1 / smooth``, or None), rotated when ``block``, quantized to FP8 per row, times ``weight``:
    float8_e4m3fn ``(N, K)`` or int4 codes uint8 ``(N, K // 2)`` (``code + 8``), float32 row scales
    ``w_scale (N,)``. With the low-rank factors (``lr_down (r, K)`` bf16 = ``L_down * signs / c``,
    ``lr_up = [B_hi, B_lo] (N, 2R)`` float8_e4m3fn from :func:`.fp8_prologue.lowrank_weight_cols`) the GEMM
    runs over ``K + 3R`` columns: ``[xr, t_hi, t_lo, t_hi]`` (``t = xd lr_down^T``) under one row scale
    times ``[W, B_hi, B_hi, B_lo]`` (:func:`.fp8_prologue.rotate_quantize_fp8`). An FP8 ``weight`` of
    ``K + 3R`` columns already carries them (then ``lr_up`` is None)."""
    return _rot_fp8_gemms(x, [(weight, w_scale, bias, col, lr_down, lr_up)], block, act)[0]


@_rot_fp8_linear.register_fake
def _(x, weight, w_scale, bias, col, block, lr_down=None, lr_up=None, act=0):
    return x.new_empty((x.shape[0], weight.shape[0]))


def rot_fp8_linear(x: torch.Tensor, weight: torch.Tensor, w_scale: torch.Tensor, bias: Optional[torch.Tensor] = None,
                   col: Optional[torch.Tensor] = None, block: int = 0, lr_down: Optional[torch.Tensor] = None,
                   lr_up: Optional[torch.Tensor] = None, act: int = 0) -> torch.Tensor:
    """``x (..., K)`` -> ``(..., N)`` through ``lsgq::rot_fp8_linear``."""
    y = torch.ops.lsgq.rot_fp8_linear(_rows_of(x), weight, w_scale, bias, col, int(block), lr_down, lr_up, int(act))
    return y.reshape(*x.shape[:-1], y.shape[-1])


@torch.library.custom_op("lsgq::rot_fp8_multi_linear", mutates_args=())
def _rot_fp8_multi_linear(x: torch.Tensor, weights: list[torch.Tensor], w_scales: list[torch.Tensor],
                          biases: list[Optional[torch.Tensor]], cols: list[Optional[torch.Tensor]], block: int,
                          lr_downs: list[Optional[torch.Tensor]], lr_ups: list[Optional[torch.Tensor]],
                          act: int = 0) -> list[torch.Tensor]:
    """Several ``lsgq::rot_fp8_linear`` layers of one input ``x (M, K)`` (an attention's q, k and v), each with
    its own weight, scales, bias, column multiplier and low-rank factors, one shared ``block`` and ``act``:
    one Triton prologue reads ``x`` for all of them (:func:`.fp8_prologue.rotate_quantize_fp8_multi`), then one
    GEMM per layer. Returns the ``(M, N_i)`` outputs, each equal to its layer's ``rot_fp8_linear``."""
    layers = list(zip(weights, w_scales, biases, cols, lr_downs, lr_ups))
    if not layers or len({len(weights), len(w_scales), len(biases), len(cols), len(lr_downs), len(lr_ups)}) != 1:
        raise ValueError("rot_fp8_multi_linear takes one weight, scale, bias, col, lr_down and lr_up per layer")
    from . import fp8_prologue as fp

    out = []
    for i in range(0, len(layers), fp.MAX_OUTPUTS):  # the kernel computes up to MAX_OUTPUTS per launch
        out += _rot_fp8_gemms(x, layers[i:i + fp.MAX_OUTPUTS], block, act)
    return out


@_rot_fp8_multi_linear.register_fake
def _(x, weights, w_scales, biases, cols, block, lr_downs, lr_ups, act=0):
    return [x.new_empty((x.shape[0], w.shape[0])) for w in weights]


def rot_fp8_multi_linear(x: torch.Tensor, layers: list[dict], block: int, act: int = 0) -> list[torch.Tensor]:
    """``x (..., K)`` -> one ``(..., N_i)`` per layer through ``lsgq::rot_fp8_multi_linear``; ``layers``: dicts
    with ``weight``, ``w_scale``, ``bias``, ``col``, ``lr_down``, ``lr_up`` (as :func:`rot_fp8_linear` takes)."""
    ys = torch.ops.lsgq.rot_fp8_multi_linear(_rows_of(x), [p["weight"] for p in layers],
                                             [p["w_scale"] for p in layers], [p["bias"] for p in layers],
                                             [p["col"] for p in layers], int(block),
                                             [p["lr_down"] for p in layers], [p["lr_up"] for p in layers], int(act))
    return [y.reshape(*x.shape[:-1], y.shape[-1]) for y in ys]


@torch.library.custom_op("lsgq::int8_linear", mutates_args=())
def _int8_linear(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor,
                 bias: Optional[torch.Tensor]) -> torch.Tensor:
    """int8 W8A8, dynamic per-token activations; ``x (M, K)`` -> ``(M, N)``."""
    xq, xs = act_int8_token(x)
    m, (n, k) = x.shape[0], w_int8.shape
    if m > 16 and (not x.is_cuda or (k % 8 == 0 and n % 8 == 0)):
        acc = torch._int_mm(xq, w_int8.t()).float()
    else:  # exact: int8 products summed in float64
        acc = (xq.double() @ w_int8.double().t()).float()
    return _bias_out(acc * xs[:, None] * w_scale[None, :], bias, x.dtype)


@_int8_linear.register_fake
def _(x, w_int8, w_scale, bias):
    return x.new_empty((x.shape[0], w_int8.shape[0]))


def int8_linear(x: torch.Tensor, w_int8: torch.Tensor, w_scale: torch.Tensor,
                bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x (..., K)`` -> ``(..., N)`` through ``lsgq::int8_linear``."""
    y = torch.ops.lsgq.int8_linear(_rows_of(x), w_int8, w_scale, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


@torch.library.custom_op("lsgq::int4_weight_linear", mutates_args=())
def _int4_weight_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """int4 weight-only; ``x (M, K)``, ``qweight int8 (N, K // 2)``, ``scales bf16 (N, G)`` -> ``(M, N)``.
    Dequantizes to x's dtype and runs a dense GEMM (fp32 accumulate)."""
    w = dequantize_int4_g128(unpack_int4(qweight), scales, kernel="bf16").to(x.dtype)
    y = torch.nn.functional.linear(x, w)
    return y if bias is None else y + bias.to(y.dtype)


@_int4_weight_linear.register_fake
def _(x, qweight, scales, bias):
    return x.new_empty((x.shape[0], qweight.shape[0]))


def int4_weight_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x (..., K)`` -> ``(..., N)`` through ``lsgq::int4_weight_linear``."""
    y = torch.ops.lsgq.int4_weight_linear(_rows_of(x), qweight, scales, bias)
    return y.reshape(*x.shape[:-1], y.shape[-1])


def int4_fp8_reference(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor,
                       bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Float32 reference of int4 x FP8 from unpacked codes: ``fp8dq(x) @ dequantize_int4_g128(codes, scales).T``."""
    y = quantize_act_fp8_row(x) @ dequantize_int4_g128(codes, scales).t()
    return y if bias is None else y + bias.float()
