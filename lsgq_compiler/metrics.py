"""Numeric quality metrics.

SQNR and PSNR judge numerics everywhere in the project (tests, reports, benchmarks).
Video metrics (SSIM, flow-warping error) live beside them.
"""
from __future__ import annotations

import math

import torch


def sqnr(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio in dB: 10 log10(||ref||^2 / ||ref - approx||^2).

    Args:
        reference: any shape, the full-precision tensor.
        approx: same shape, the quantized/approximate tensor.

    Returns ``inf`` when the two are identical.
    """
    if reference.shape != approx.shape:
        raise ValueError(f"sqnr: shapes differ, {tuple(reference.shape)} vs {tuple(approx.shape)}.\n"
                         "Compare tensors produced from the same inputs.")
    ref = reference.detach().double()
    err = (ref - approx.detach().double()).pow(2).sum().item()
    sig = ref.pow(2).sum().item()
    if err == 0.0:
        return math.inf
    if sig == 0.0:
        return -math.inf
    return 10.0 * math.log10(sig / err)


def psnr(reference: torch.Tensor, approx: torch.Tensor, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / MSE).

    Args:
        reference: any shape, values in [0, data_range].
        approx: same shape.
        data_range: the peak value (1.0 for float images, 255 for uint8).
    """
    if reference.shape != approx.shape:
        raise ValueError(f"psnr: shapes differ, {tuple(reference.shape)} vs {tuple(approx.shape)}.\n"
                         "Compare frames of the same size.")
    mse = (reference.detach().double() - approx.detach().double()).pow(2).mean().item()
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)
