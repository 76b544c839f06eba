"""Fake-quantization primitives: pure tensor math, no module plumbing.

Conventions (shape notation: ``X: (..., K)`` activations with K input features per
token; ``W: (N, K)`` linear weight):

- ``granularity`` says which elements share one scale:
  ``"tensor"`` all; ``"token"`` / ``"row"`` one per row of the last dim (for a weight
  this is per output channel); ``"channel"`` one per column of the last dim (per input
  channel of an activation); ``"group"`` contiguous groups of ``group_size`` along the
  last dim, per row.
- Symmetric: integers in [-2^(b-1), 2^(b-1)-1], zero point 0, scale = amax / (2^(b-1)-1).
- Asymmetric: integers in [0, 2^b - 1], the range widened to include 0.
- Rounding uses a straight-through estimator; clamping passes no gradient outside the
  range, and the scale receives the LSQ-style gradient, so learnable scales train.
"""
from __future__ import annotations

from typing import Literal

import torch

Granularity = Literal["tensor", "token", "row", "channel", "group"]
GRANULARITIES: tuple[str, ...] = ("tensor", "token", "row", "channel", "group")
_EPS = 1e-8


def qrange(bits: int, symmetric: bool) -> tuple[int, int]:
    """Integer range ``(qmin, qmax)`` for ``bits`` (2..8, or 16 for pass-through tests)."""
    if symmetric:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def _check_granularity(x: torch.Tensor, granularity: str, group_size: int | None) -> None:
    if granularity not in GRANULARITIES:
        raise ValueError(f"unknown granularity {granularity!r}; use one of {GRANULARITIES}.")
    if granularity == "group":
        if not group_size or group_size <= 0:
            raise ValueError("granularity 'group' needs a positive group_size.")
        if x.shape[-1] % group_size:
            raise ValueError(f"group_size {group_size} does not divide the last dim {x.shape[-1]}; "
                             "pick a divisor of in_features.")


def _grouped(x: torch.Tensor, granularity: str, group_size: int | None) -> torch.Tensor:
    if granularity == "group":
        return x.reshape(*x.shape[:-1], x.shape[-1] // group_size, group_size)
    return x


def _reduce_dims(x: torch.Tensor, granularity: str) -> tuple[int, ...] | None:
    if granularity == "tensor":
        return None
    if granularity in ("token", "row", "group"):
        return (-1,)
    return tuple(range(x.dim() - 1))  # channel: over all tokens


def _amin_amax(x: torch.Tensor, dims: tuple[int, ...] | None) -> tuple[torch.Tensor, torch.Tensor]:
    if dims is None:
        return x.amin(), x.amax()
    return x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)


def compute_qparams(
    x: torch.Tensor,
    bits: int,
    symmetric: bool = True,
    granularity: Granularity = "tensor",
    group_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Min/max scale and zero point for ``x`` at ``granularity``.

    Args:
        x: ``(..., K)``.
    Returns:
        ``(scale, zero_point)``, broadcastable to ``x`` (for ``"group"``, to
        ``x.reshape(..., K // group_size, group_size)``). Computed without gradient.
    """
    _check_granularity(x, granularity, group_size)
    qmin, qmax = qrange(bits, symmetric)
    with torch.no_grad():
        xg = _grouped(x.detach(), granularity, group_size)
        lo, hi = _amin_amax(xg, _reduce_dims(xg, granularity))
        if symmetric:
            amax = torch.maximum(lo.abs(), hi.abs())
            scale = (amax / qmax).clamp_min(_EPS)
            zero = torch.zeros_like(scale)
        else:
            lo, hi = lo.clamp(max=0), hi.clamp(min=0)
            scale = ((hi - lo) / (qmax - qmin)).clamp_min(_EPS)
            zero = (qmin - torch.round(lo / scale)).clamp(qmin, qmax)
    return scale, zero


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # noqa: D401
        return torch.round(x)

    @staticmethod
    def backward(ctx, g):
        return g


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` with identity gradient."""
    return _RoundSTE.apply(x)


def quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool = True,
    granularity: Granularity = "tensor", group_size: int | None = None, ste: bool = False,
) -> torch.Tensor:
    """Integer codes of ``x`` on the grid given by ``scale``/``zero_point``: the one quantizer.

    Args:
        x: ``(..., K)``; scale/zero_point as returned by :func:`compute_qparams`.
        ste: round with identity gradient (training); else plain ``torch.round``.
    Returns:
        codes in ``[qmin, qmax]``, dtype of ``x``, shaped like the grouped ``x``
        (``(..., K // group_size, group_size)`` for ``"group"``, else ``(..., K)``).
    """
    qmin, qmax = qrange(bits, symmetric)
    xg = _grouped(x, granularity, group_size)
    return torch.clamp((round_ste if ste else torch.round)(xg / scale) + zero_point, qmin, qmax)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               shape: torch.Size | None = None) -> torch.Tensor:
    """``(q - zero_point) * scale``, reshaped to ``shape`` (the ungrouped ``(..., K)``) if given."""
    y = (q - zero_point) * scale
    return y if shape is None else y.reshape(shape)


def fake_quantize(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, bits: int, symmetric: bool = True,
    granularity: Granularity = "tensor", group_size: int | None = None,
) -> torch.Tensor:
    """Quantize-dequantize ``x`` with given parameters; straight-through gradients.

    ``dequantize(quantize(..., ste=True))``: the same codes :func:`quantize_to_int` stores.

    Args:
        x: ``(..., K)``; scale/zero_point as returned by :func:`compute_qparams`.
    Returns:
        ``(..., K)``, same dtype as ``x``.
    """
    q = quantize(x, scale, zero_point, bits, symmetric, granularity, group_size, ste=True)
    return dequantize(q, scale, zero_point, x.shape)


def quantize_dequantize(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: Granularity = "tensor",
                        group_size: int | None = None) -> torch.Tensor:
    """Dynamic min/max fake quantization: parameters from ``x`` itself (this call).

    Args:
        x: ``(..., K)``.
    Returns:
        ``(..., K)`` on the quantization grid.
    """
    scale, zero = compute_qparams(x, bits, symmetric, granularity, group_size)
    return fake_quantize(x, scale, zero, bits, symmetric, granularity, group_size)


def quantize_to_int(x: torch.Tensor, bits: int, symmetric: bool = True, granularity: Granularity = "tensor",
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Real quantization: integer codes plus parameters (for lowering and storage).

    Returns:
        ``(q, scale, zero_point)``; ``q`` int8 for bits <= 8 symmetric, uint8 for
        asymmetric, shaped like the grouped ``x``; ``dequantize(q, scale, zero_point,
        x.shape)`` equals :func:`quantize_dequantize` of ``x``.
    """
    scale, zero = compute_qparams(x, bits, symmetric, granularity, group_size)
    q = quantize(x.detach(), scale, zero, bits, symmetric, granularity, group_size)
    return q.to(torch.int8 if symmetric else torch.uint8), scale, zero
