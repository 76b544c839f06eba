"""The exact numerics of the deploy kernels, and fake quantizers that compute them.

Shape notation: ``W: (N, K)`` weight, ``X: (..., K)`` activations, ``G = K // 128`` groups.

The quantize functions here define what each kernel computes (the GPU kernels in
:mod:`lsgq_compiler.kernels.deploy_ops` take their outputs; where that module provides the
same function, it is used, so there is one definition). :class:`TargetWeightQuant` and
:class:`TargetActQuant` return exactly the dequantized values the kernel multiplies, with
straight-through gradients, so quantization-aware training trains the weights that will run
and the deployed codes equal the trained weights' codes bit for bit.
"""
from __future__ import annotations

import torch
from torch import nn

FP8_MAX = 448.0  # largest finite float8_e4m3fn
GROUP = 128
_EPS = 1e-12


def _deploy_ops():
    try:
        from lsgq_compiler.kernels import deploy_ops
    except ImportError:
        return None
    return deploy_ops


class _Replace(torch.autograd.Function):
    """Forward: ``q`` exactly; backward: the gradient goes to ``x`` unchanged (straight through)."""

    @staticmethod
    def forward(ctx, x, q):  # noqa: D401
        return q

    @staticmethod
    def backward(ctx, g):
        return g, None


def ste(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, identity gradient to ``x``; no-op without autograd."""
    if torch.is_grad_enabled() and x.requires_grad:
        return _Replace.apply(x, q)
    return q


# ----------------------------------------------------------------------------- weights
def quantize_weight_int4_g128(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 in groups of 128 along K: ``scale = bf16(amax / 7)``, ``q = clamp(round(w / scale), -8, 7)``.

    Args:
        w: ``(N, K)``, ``K % 128 == 0``.
    Returns:
        ``(codes int8 (N, K) in [-8, 7], scales bf16 (N, G))``.
    """
    ops = _deploy_ops()
    if ops is not None and hasattr(ops, "quantize_weight_int4_g128"):
        return ops.quantize_weight_int4_g128(w)
    n, k = w.shape
    wg = w.detach().float().reshape(n, k // GROUP, GROUP)
    scale = (wg.abs().amax(-1) / 7.0).clamp_min(1e-8).to(torch.bfloat16)
    q = torch.round(wg / scale.float()[..., None]).clamp(-8, 7)
    return q.reshape(n, k).to(torch.int8), scale


def dequantize_int4_g128(codes: torch.Tensor, scales: torch.Tensor, kernel: str = "bf16") -> torch.Tensor:
    """The float32 ``(N, K)`` weight a kernel multiplies: ``kernel="bf16"`` (int4 weight-only)
    ``code * scale`` per group; ``kernel="fp8"`` (int4 x FP8 on sm_90) the kernel's FP8 lookup
    (``deploy_ops.dequantize_int4_g128``)."""
    ops = _deploy_ops()
    if ops is not None and hasattr(ops, "dequantize_int4_g128"):
        return ops.dequantize_int4_g128(codes, scales, kernel=kernel)
    if kernel != "bf16":
        raise RuntimeError("the int4 x FP8 numerics need lsgq_compiler.kernels.deploy_ops")
    n, k = codes.shape
    return (codes.float().reshape(n, k // GROUP, GROUP) * scales.float()[..., None]).reshape(n, k)


def quantize_weight_int4_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int4 per output row: ``scale = max(amax / 7, 1e-8)`` (float32), ``q = clamp(round(w / scale), -8, 7)``.

    The grid of ``int4r_fp8``: every code is an integer in [-8, 7], exact in FP8 e4m3, so the
    kernel unpacks the codes to FP8 and runs the FP8 rowwise GEMM with ``scale`` as the weight's
    row scale (:func:`lsgq_compiler.kernels.deploy_ops.int4r_fp8_linear`).

    Args:
        w: ``(N, K)``.
    Returns:
        ``(codes int8 (N, K) in [-8, 7], scale float32 (N,))``.
    """
    wf = w.detach().float()
    scale = (wf.abs().amax(-1) / 7.0).clamp_min(1e-8)
    return torch.round(wf / scale[:, None]).clamp(-8, 7).to(torch.int8), scale


def quantize_weight_fp8_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 e4m3 per output row: ``scale = amax / 448`` (float32), ``w_fp8 = e4m3(w / scale)``.

    Returns:
        ``(w_fp8 float8_e4m3fn (N, K), scale float32 (N,))``.
    """
    ops = _deploy_ops()
    if ops is not None and hasattr(ops, "quantize_weight_fp8_row"):
        return ops.quantize_weight_fp8_row(w)
    wf = w.detach().float()
    scale = (wf.abs().amax(-1) / FP8_MAX).clamp_min(_EPS)
    return (wf / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


def quantize_weight_int8_row(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: ``scale = amax / 127``, ``q = clamp(round(w / scale), -128, 127)``.

    Returns:
        ``(codes int8 (N, K), scale float32 (N,))``.
    """
    ops = _deploy_ops()
    if ops is not None and hasattr(ops, "quantize_weight_int8_row"):
        return ops.quantize_weight_int8_row(w)
    wf = w.detach().float()
    scale = (wf.abs().amax(-1) / 127.0).clamp_min(1e-8)
    return torch.round(wf / scale[:, None]).clamp(-128, 127).to(torch.int8), scale


# ----------------------------------------------------------------------------- activations
def quantize_act_fp8_row(x: torch.Tensor) -> torch.Tensor:
    """FP8 e4m3 per row (token) of ``x: (..., K)``, dequantized: what the FP8 kernels multiply.

    ``scale = amax_row / 448`` in float32, ``x_dq = e4m3(x / scale) * scale``; returns float32.
    """
    ops = _deploy_ops()
    if ops is not None and hasattr(ops, "quantize_act_fp8_row"):
        return ops.quantize_act_fp8_row(x).float()
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / FP8_MAX).clamp_min(_EPS)
    return (xf / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float() * scale


def quantize_act_int8_token(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dynamic symmetric int8 per token: ``(codes int8 (..., K), scale float32 (..., 1))``,
    ``scale = amax / 127`` (the same grid as ``quantize_dequantize(x, 8, True, "token")``)."""
    xf = x.float()
    scale = (xf.abs().amax(-1, keepdim=True) / 127.0).clamp_min(1e-8)
    return torch.round(xf / scale).clamp(-128, 127).to(torch.int8), scale


def dequant_act_int8_token(x: torch.Tensor) -> torch.Tensor:
    q, s = quantize_act_int8_token(x)
    return q.float() * s


# ----------------------------------------------------------------------------- fake quantizers
WEIGHT_KINDS = ("int4_row", "int4_g128_fp8", "int4_g128", "fp8_row", "int8_row")
ACT_KINDS = ("fp8_row", "int8_token")


def dequantized_weight(w: torch.Tensor, kind: str) -> torch.Tensor:
    """The float32 ``(N, K)`` weight a kernel of ``kind`` multiplies (no gradient)."""
    if kind == "int4_g128":
        return dequantize_int4_g128(*quantize_weight_int4_g128(w), kernel="bf16")
    if kind == "int4_g128_fp8":
        return dequantize_int4_g128(*quantize_weight_int4_g128(w), kernel="fp8")
    if kind == "int4_row":
        q, s = quantize_weight_int4_row(w)
        return q.float() * s[:, None]
    if kind == "fp8_row":
        q, s = quantize_weight_fp8_row(w)
        return q.float() * s[:, None]
    if kind == "int8_row":
        q, s = quantize_weight_int8_row(w)
        return q.float() * s[:, None]
    raise ValueError(f"unknown weight kind {kind!r}; use one of {WEIGHT_KINDS}")


def dequantized_act(x: torch.Tensor, kind: str) -> torch.Tensor:
    """The float32 activations a kernel of ``kind`` multiplies, ``x: (..., K)``."""
    if kind == "fp8_row":
        return quantize_act_fp8_row(x)
    if kind == "int8_token":
        return dequant_act_int8_token(x)
    raise ValueError(f"unknown activation kind {kind!r}; use one of {ACT_KINDS}")


class TargetWeightQuant(nn.Module):
    """Fake quantizer of ``W: (N, K)`` on a kernel's exact grid (``kind`` in :data:`WEIGHT_KINDS`)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in WEIGHT_KINDS:
            raise ValueError(f"unknown weight kind {kind!r}; use one of {WEIGHT_KINDS}")
        self.kind = kind

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = dequantized_weight(w, self.kind).to(w.dtype)
        return ste(w, q)

    def extra_repr(self) -> str:
        return self.kind


class TargetActQuant(nn.Module):
    """Fake quantizer of ``X: (..., K)`` on a kernel's exact grid (``kind`` in :data:`ACT_KINDS`)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        if kind not in ACT_KINDS:
            raise ValueError(f"unknown activation kind {kind!r}; use one of {ACT_KINDS}")
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            q = dequantized_act(x, self.kind).to(x.dtype)
        return ste(x, q)

    def extra_repr(self) -> str:
        return self.kind


#: deploy kind -> (weight kind, activation kind or None)
KIND_QUANTIZERS: dict[str, tuple[str, str | None]] = {
    "int4r_fp8": ("int4_row", "fp8_row"),
    "int4_fp8": ("int4_g128_fp8", "fp8_row"),
    "int4_weight": ("int4_g128", None),
    "fp8_row": ("fp8_row", "fp8_row"),
    "int8_row": ("int8_row", "int8_token"),
}


def snap_bf16(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to bf16-representable values, in ``t``'s dtype."""
    return t.to(torch.bfloat16).to(t.dtype)


# ----------------------------------------------------------------------------- low-rank branch in the FP8 GEMM
#: weight kinds (with FP8 per-row activations) whose GEMM also carries the layer's low-rank branch
LOWRANK_IN_GEMM_KINDS = ("int4_row", "fp8_row")


def lowrank_col_scale(down: torch.Tensor) -> torch.Tensor:
    """Per rank ``j`` the power of two nearest ``||L_down[j]||_2``: ``down (r, K)`` -> ``(r,)`` float32.

    ``t_j = x_s . L_down[j] / c_j`` is then about as large as one entry of the rotated input (a
    projection on a unit vector), so both share one FP8 row scale; powers of two keep
    ``L_down / c`` and ``L_up * c`` exact."""
    norm = down.detach().float().norm(dim=1).clamp_min(2.0 ** -60)
    return torch.exp2(torch.round(torch.log2(norm)))


def weight_row_scale(w: torch.Tensor, kind: str) -> torch.Tensor:
    """The float32 ``(N,)`` row scale of a per-row weight kind (``int4_row`` or ``fp8_row``)."""
    if kind == "int4_row":
        return quantize_weight_int4_row(w)[1]
    if kind == "fp8_row":
        return quantize_weight_fp8_row(w)[1]
    raise ValueError(f"weight kind {kind!r} has no per-row scale; use one of {LOWRANK_IN_GEMM_KINDS}")


def _e4m3(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def fp8_split(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`lsgq_compiler.kernels.fp8_prologue.split_fp8` of float ``v``, as float32 values."""
    from lsgq_compiler.kernels.fp8_prologue import split_fp8

    hi, lo = split_fp8(v.float())
    return hi.float(), lo.float()


def lowrank_in_gemm_linear(xr: torch.Tensor, xs: torch.Tensor, w_dq: torch.Tensor, w_scale: torch.Tensor,
                           bias: torch.Tensor | None, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """What ``lsgq::rot_fp8_linear`` computes when the low-rank branch rides in the FP8 GEMM.

    ``t = xs L_down^T / c`` (``c``: :func:`lowrank_col_scale`) and ``B = L_up c``. The GEMM's ``A``
    operand is ``[xr, t_hi, t_lo, t_hi]`` quantized to FP8 per row with one joint scale
    ``s = max(amax_row(xr), amax_row(t), 1e-12) / 448``, its ``B`` operand ``[W_q, B_hi, B_hi, B_lo]``
    under the weight's row scale ``w_scale`` (hi/lo: :func:`fp8_split` of ``t / s`` and ``B / w_scale``),
    so the low-rank product keeps ~8 significant bits (one FP8 term per side would keep 4 and cost
    ~8 dB of layer SQNR where the branch dominates). Returns
    ``xq W_q^T + bias + s w_scale (t_hi B_hi + t_lo B_hi + t_hi B_lo)``, with straight-through
    gradients to ``xr`` and to the low-rank product ``t B^T``.

    Args:
        xr: ``(..., K)`` rotated (or plain) smoothed activations; xs: ``(..., K)`` smoothed, unrotated.
        w_dq: ``(N, K)`` the dequantized weight (``codes * w_scale``); w_scale: ``(N,)`` float32.
        bias: ``(N,)`` or None; down: ``(r, K)``; up: ``(N, r)``.
    Returns:
        ``(..., N)`` in ``xr``'s dtype.
    """
    dt = xr.dtype
    c = lowrank_col_scale(down).to(down.device)
    t = torch.nn.functional.linear(xs, (down / c.to(down.dtype)[:, None]).to(xs.dtype))
    b = up * c.to(up.dtype)[None, :]
    with torch.no_grad():
        xf, tf = xr.float(), t.float()
        amax = torch.maximum(xf.abs().amax(-1, keepdim=True), tf.abs().amax(-1, keepdim=True))
        scale = amax.clamp_min(_EPS) / FP8_MAX
        xq = _e4m3(xf / scale) * scale
        th, tl = fp8_split(tf / scale)
        ws = w_scale.float()[:, None].to(b.device)
        bh, bl = fp8_split(b.float() / ws)
        lr_q = torch.nn.functional.linear(torch.cat([th, tl, th], -1) * scale, torch.cat([bh, bh, bl], 1) * ws)
    y = torch.nn.functional.linear(ste(xr, xq.to(dt)), w_dq.to(dt), None if bias is None else bias.to(dt))
    if torch.is_grad_enabled() and (t.requires_grad or b.requires_grad):
        lr = ste(torch.nn.functional.linear(t, b.to(t.dtype)), lr_q.to(dt))
    else:
        lr = lr_q.to(dt)
    return y + lr
