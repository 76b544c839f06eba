"""Run a fixed-shape VSR model on clips of any size: spatio-temporal tiles, blended.

The transformer is captured at one static shape (``frames x tile x tile`` LQ pixels), so
larger clips are cut into overlapping tiles (linear-ramp blending in the overlaps),
smaller ones are padded by reflection, and clips with other frame counts are cut into
overlapping temporal windows (or padded by repeating frames). The output is exactly the
tile's output wherever tiles do not overlap.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch


def _starts(n: int, tile: int, overlap: int) -> list[int]:
    if n <= tile:
        return [0]
    stride = tile - overlap
    s = list(range(0, n - tile, stride)) + [n - tile]
    return sorted(set(s))


def _ramp(n: int, tile: int, overlap: int, scale: int) -> np.ndarray:
    """1-D blending weight of length ``tile*scale``: ramps over the overlap at both ends."""
    w = np.ones(tile * scale, dtype=np.float64)
    if n > tile and overlap > 0:
        r = np.linspace(0, 1, overlap * scale + 2)[1:-1]
        w[: overlap * scale] = r
        w[-overlap * scale:] = r[::-1]
    return w


def run_tiled(fn: Callable[[np.ndarray], np.ndarray], lq: np.ndarray, frames: int, tile: int,
              overlap: int = 8, scale: int = 4) -> np.ndarray:
    """Apply ``fn`` (``(frames, tile, tile, 3)`` uint8 -> ``(frames, tile*scale, tile*scale, 3)``
    uint8) over ``lq: (T, h, w, 3)``; returns ``(T, h*scale, w*scale, 3)`` uint8."""
    t, h, w, _ = lq.shape
    ph, pw = max(0, tile - h), max(0, tile - w)
    x = np.pad(lq, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else lq
    if t < frames:  # repeat frames back and forth to fill the window
        idx = np.concatenate([np.arange(t), np.arange(t - 2, -1, -1)] * frames)[:frames] if t > 1 else [0] * frames
        x_t = x[idx]
    else:
        x_t = x
    T, H, W = x_t.shape[:3]
    acc = np.zeros((T, H * scale, W * scale, 3), dtype=np.float64)
    wsum = np.zeros((T, H * scale, W * scale, 1), dtype=np.float64)
    for t0 in _starts(T, frames, max(1, frames // 4)):
        for y0 in _starts(H, tile, overlap):
            for x0 in _starts(W, tile, overlap):
                out = fn(x_t[t0:t0 + frames, y0:y0 + tile, x0:x0 + tile]).astype(np.float64)
                wy = _ramp(H, tile, overlap, scale)
                wx = _ramp(W, tile, overlap, scale)
                wgt = (wy[:, None] * wx[None, :])[None, :, :, None]
                sl = (slice(t0, t0 + frames), slice(y0 * scale, (y0 + tile) * scale),
                      slice(x0 * scale, (x0 + tile) * scale))
                acc[sl] += out * wgt
                wsum[sl] += wgt
    y = acc / np.maximum(wsum, 1e-12)
    y = y[:t, : h * scale, : w * scale]
    return np.clip(np.round(y), 0, 255).astype(np.uint8)


def to_tensor(clip: np.ndarray) -> torch.Tensor:
    """``(T, h, w, 3)`` uint8 -> ``(1, 3, T, h, w)`` float in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).unsqueeze(0).float() / 255.0


def to_uint8(video: torch.Tensor) -> np.ndarray:
    """``(1, 3, T, H, W)`` float in [0, 1] -> ``(T, H, W, 3)`` uint8."""
    v = video.detach()[0].permute(1, 2, 3, 0).clamp(0, 1).mul(255).round()
    return v.to(torch.uint8).cpu().numpy()
