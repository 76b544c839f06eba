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


# ---------------------------------------------------------------------------------------------
# Video metrics on numpy frames: (T, H, W, 3) or (H, W, 3) RGB, uint8 (or float on data_range).
# ---------------------------------------------------------------------------------------------
import numpy as np  # noqa: E402  (numpy comes with torch; OpenCV is imported where it is used)


def _as_video(x: np.ndarray, name: str) -> np.ndarray:
    """Return a float64 (T, H, W, C) view of a numpy video/image; raise a clear error otherwise."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{name} is a {type(x).__name__}, not a numpy array.\n"
                         "  -> Pass frames as a numpy array shaped (T, H, W, 3) or (H, W, 3).")
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (T, H, W, 3) or (H, W, 3).\n"
                         "  -> Pass RGB frames with channels last.")
    return x.astype(np.float64, copy=False)


def _pair(ref: np.ndarray, x: np.ndarray, fn: str) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_video(ref, "ref"), _as_video(x, "x")
    if a.shape != b.shape:
        raise ValueError(f"{fn}: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}.\n"
                         "  -> Compare clips of the same frame count and size (crop or resize one of them).")
    return a, b


def ssim(ref: np.ndarray, x: np.ndarray, data_range: float = 255.0) -> float:
    """Structural similarity (Wang et al. 2004), mean over frames, channels and pixels.

    Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, population (not sample)
    covariances; each channel is scored separately and averaged, then frames are averaged.
    Border pixels whose window would leave the frame (5 on each side) are left out, which
    matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1)``.

    Args:
        ref: ``(T, H, W, 3)`` or ``(H, W, 3)``, uint8 (or float on ``[0, data_range]``); H, W >= 11.
        x: same shape as ``ref``.
        data_range: peak value (255 for uint8).

    Returns:
        Mean SSIM in [-1, 1]; 1.0 for identical inputs.
    """
    import cv2

    a, b = _pair(ref, x, "ssim")
    t, h, w, c = a.shape
    if h < 11 or w < 11:
        raise ValueError(f"ssim: frames are {w}x{h}; the 11x11 window needs at least 11x11.\n"
                         "  -> Use larger frames (or compare with psnr_video).")
    g = np.exp(-0.5 * (np.arange(-5, 6) / 1.5) ** 2)
    g = g / g.sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2

    def blur(img):  # 'valid' Gaussian filtering: drop the 5-pixel border
        return cv2.sepFilter2D(img, cv2.CV_64F, g, g, borderType=cv2.BORDER_REFLECT)[5:h - 5, 5:w - 5]

    scores = []
    for i in range(t):
        for ch in range(c):
            p, q = np.ascontiguousarray(a[i, :, :, ch]), np.ascontiguousarray(b[i, :, :, ch])
            mp, mq = blur(p), blur(q)
            vp, vq, cov = blur(p * p) - mp * mp, blur(q * q) - mq * mq, blur(p * q) - mp * mq
            s = ((2 * mp * mq + c1) * (2 * cov + c2)) / ((mp * mp + mq * mq + c1) * (vp + vq + c2))
            scores.append(float(s.mean()))
    return float(np.mean(scores))


def psnr_video(ref: np.ndarray, x: np.ndarray, data_range: float = 255.0) -> float:
    """PSNR of a whole clip in dB: 10 log10(data_range^2 / MSE), MSE over all frames and pixels.

    Args:
        ref: ``(T, H, W, 3)`` or ``(H, W, 3)``, uint8 (or float on ``[0, data_range]``).
        x: same shape.
        data_range: peak value (255 for uint8).

    Returns:
        PSNR in dB; ``inf`` for identical clips. (One MSE over the clip, not a mean of per-frame PSNRs.)
    """
    a, b = _pair(ref, x, "psnr_video")
    mse = float(np.mean((a - b) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range * data_range / mse)


def warp_error(frames: np.ndarray, data_range: float = 255.0) -> float:
    """Temporal (in)consistency: mean flow-warping error between consecutive frames.

    For each pair (t, t+1): Farneback optical flow from frame t+1 to frame t (on gray
    frames), frame t warped onto frame t+1 with ``cv2.remap`` (bilinear), then the mean of
    |warped - frame_{t+1}| on a [0, 1] scale over pixels whose flow lands inside frame t,
    and over the 3 channels. Pairs are averaged. Lower is better: ~0 for a static clip,
    small for a smooth pan, about 1/3 for independent uniform noise.

    Args:
        frames: ``(T, H, W, 3)`` uint8 RGB (or float on ``[0, data_range]``), T >= 2.
        data_range: peak value (255 for uint8).

    Returns:
        The mean absolute warping error in [0, 1].
    """
    import cv2

    v = _as_video(frames, "frames")
    t, h, w, c = v.shape
    if t < 2:
        raise ValueError(f"warp_error: got {t} frame(s); temporal consistency needs at least 2.\n"
                         "  -> Pass a clip shaped (T, H, W, 3) with T >= 2.")
    v = (v / data_range).astype(np.float32)
    gray = [(f.mean(axis=2) * 255.0).clip(0, 255).astype(np.uint8) for f in v] if c == 3 else \
        [(f[:, :, 0] * 255.0).clip(0, 255).astype(np.uint8) for f in v]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    errors = []
    for i in range(t - 1):
        flow = cv2.calcOpticalFlowFarneback(gray[i + 1], gray[i], None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
        mx, my = gx + flow[:, :, 0], gy + flow[:, :, 1]
        warped = cv2.remap(v[i], mx, my, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
        if warped.ndim == 2:
            warped = warped[:, :, None]
        inside = (mx >= 0) & (mx <= w - 1) & (my >= 0) & (my <= h - 1)
        if not inside.any():
            continue
        errors.append(float(np.abs(warped - v[i + 1])[inside].mean()))
    if not errors:
        return math.nan
    return float(np.mean(errors))
