"""Synthetic high-quality clips: seeded camera pans and zooms over real photographs.

The photographs are the ones bundled inside the scikit-image wheel (``skimage.data``),
so nothing is downloaded. Colour photographs are used as they are; a few grayscale
photographs (textures and scenes) are offered as 3-channel gray images (R = G = B) to
widen the content. ``cat`` is left out: it is the same image as ``chelsea``. The
stereo pair ``motorcycle_left`` / ``motorcycle_right`` shows one scene, so users that
split photos into sets must keep the two together (``sets.py`` does).
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from lsgq_compiler.vsr.data.io import ClipError, _err

__all__ = ["COLOR_PHOTOS", "GRAY_PHOTOS", "photo_names", "load_photo", "pan_zoom_clip"]

#: Real colour photographs in skimage.data that load offline.
COLOR_PHOTOS: tuple[str, ...] = (
    "astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "motorcycle_right",
    "retina", "immunohistochemistry", "hubble_deep_field",
)
#: Real grayscale photographs, returned as 3-channel gray.
GRAY_PHOTOS: tuple[str, ...] = ("camera", "grass", "gravel", "brick", "moon", "coins", "clock", "page", "text")


def photo_names() -> list[str]:
    """Names accepted by :func:`load_photo`: the colour photos, then the gray ones."""
    return list(COLOR_PHOTOS + GRAY_PHOTOS)


@lru_cache(maxsize=32)
def _load_cached(name: str) -> np.ndarray:
    import skimage.data as skd

    if name in ("motorcycle_left", "motorcycle_right"):
        left, right, _disp = skd.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    else:
        img = getattr(skd, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise RuntimeError(f"skimage.data.{name} gave {img.dtype} {img.shape}; expected uint8 (H, W, 3).")
    img = np.ascontiguousarray(img)
    img.setflags(write=False)
    return img


def load_photo(name: str) -> np.ndarray:
    """Load one bundled photograph.

    Args:
        name: one of :func:`photo_names`.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB (gray photos have R = G = B). A fresh writable copy.
    """
    if name not in photo_names():
        raise _err(f"unknown photo {name!r}.", f"Pick one of: {', '.join(photo_names())}.")
    return _load_cached(name).copy()


def pan_zoom_clip(image: np.ndarray, frames: int, size: tuple[int, int], seed: int,
                  max_speed: float = 3.0, max_zoom_change: float = 0.15, max_rotation_deg: float = 2.0
                  ) -> np.ndarray:
    """Film a photograph with a smooth, seeded virtual camera (pan + zoom + slight roll).

    The view window covers about a third of the photo's short side (seeded, never
    upsampling the photo). Over the clip its centre moves along a gently curved path at
    ``0.5 .. max_speed`` output pixels per frame, its scale changes by up to
    ``+-max_zoom_change`` and it rolls by up to ``+-max_rotation_deg``. Each frame is a
    sub-pixel affine resample (photo pre-shrunk once with area averaging, then
    ``cv2.warpAffine`` with bicubic interpolation), so consecutive frames have realistic,
    non-integer motion.

    Args:
        image: ``(H, W, 3)`` ``uint8`` RGB photograph.
        frames: number of frames ``T`` (>= 2).
        size: output ``(h, w)``; the photo must be at least this large.
        seed: integer seed; the same seed gives bit-identical frames.
        max_speed: largest pan speed, in output pixels per frame.
        max_zoom_change: largest relative change of the view scale over the clip.
        max_rotation_deg: largest roll over the clip, in degrees.

    Returns:
        ``(T, h, w, 3)`` ``uint8`` RGB.
    """
    import cv2

    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        desc = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise _err(f"pan_zoom_clip: image is {desc}, expected (H, W, 3) uint8 RGB.", "Load it with load_photo(name).")
    if frames < 2:
        raise _err(f"pan_zoom_clip: frames={frames}; a clip needs at least 2.", "Pass frames >= 2.")
    out_h, out_w = int(size[0]), int(size[1])
    src_h, src_w = image.shape[:2]
    if out_h < 8 or out_w < 8 or out_h > src_h or out_w > src_w:
        raise _err(f"pan_zoom_clip: output {out_w}x{out_h} does not fit the {src_w}x{src_h} photo.",
                   "Ask for a size between 8x8 and the photo size.")

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 0x5A11]))
    u = rng.random(8)  # fixed draw order: every parameter always comes from the same slot
    # Source pixels per output pixel: the window spans ~1/3 of the short side, x[0.8, 1.25].
    base = max(1.0, min(src_h, src_w) / (3.0 * max(out_h, out_w))) * math.exp((u[0] - 0.5) * 2 * math.log(1.25))
    dz = (u[1] * 2 - 1) * max_zoom_change
    rot = math.radians((u[2] * 2 - 1) * max_rotation_deg)
    t01 = np.linspace(0.0, 1.0, frames)
    ease = 0.5 - 0.5 * np.cos(math.pi * t01)  # smooth in-out profile for zoom and roll
    angles = rot * ease
    scales = base * (1.0 + dz * ease)
    scales = scales / min(1.0, float(scales.min()))  # never upsample the photo ...
    c, s = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    fits = np.minimum(src_w / (out_w * c + out_h * s), src_h / (out_w * s + out_h * c)) * 0.999
    over = float((scales / fits).max())
    if over > 1.0:  # ... unless the photo is barely larger than the output: then the window must fit
        scales = scales / over

    # Path of the centre, in source pixels: constant speed along a slightly curved line.
    speed = 0.5 + u[3] * (max_speed - 0.5)
    heading = u[4] * 2 * math.pi
    bend = (u[5] * 2 - 1) * 0.6  # radians of heading change over the clip
    steps = np.arange(frames - 1, dtype=np.float64)
    headings = heading + bend * (steps / max(frames - 2, 1))
    step_px = speed * scales[:-1]  # output px/frame -> source px/frame
    path = np.zeros((frames, 2))  # (x, y)
    path[1:, 0] = np.cumsum(step_px * np.cos(headings))
    path[1:, 1] = np.cumsum(step_px * np.sin(headings))
    # Half-extent of each window (axis-aligned bounding box of the rotated window).
    half_x = 0.5 * scales * (out_w * c + out_h * s)
    half_y = 0.5 * scales * (out_w * s + out_h * c)
    # Where can the start point go so that every window stays inside [0, W] x [0, H]?
    lo_x = np.max(half_x - path[:, 0]); hi_x = np.min(src_w - half_x - path[:, 0])
    lo_y = np.max(half_y - path[:, 1]); hi_y = np.min(src_h - half_y - path[:, 1])
    if hi_x < lo_x or hi_y < lo_y:  # the pan is too long for this photo: shorten it
        span_x = path[:, 0].max() - path[:, 0].min(); span_y = path[:, 1].max() - path[:, 1].min()
        room_x = src_w - 2 * half_x.max(); room_y = src_h - 2 * half_y.max()
        shrink = min(1.0, room_x / span_x if span_x > 0 else 1.0, room_y / span_y if span_y > 0 else 1.0) * 0.98
        path *= max(shrink, 0.0)
        lo_x = np.max(half_x - path[:, 0]); hi_x = np.min(src_w - half_x - path[:, 0])
        lo_y = np.max(half_y - path[:, 1]); hi_y = np.min(src_h - half_y - path[:, 1])
    x0 = lo_x + u[6] * max(hi_x - lo_x, 0.0)
    y0 = lo_y + u[7] * max(hi_y - lo_y, 0.0)
    centres = path + np.array([x0, y0])

    # Pre-shrink once with area averaging so the per-frame bicubic warp only resamples by <= ~1.3x.
    pre = float(scales.min())
    if pre > 1.0 + 1e-6:
        small = cv2.resize(image, (max(1, round(src_w / pre)), max(1, round(src_h / pre))),
                           interpolation=cv2.INTER_AREA)
        fx, fy = small.shape[1] / src_w, small.shape[0] / src_h
    else:
        small, fx, fy = image, 1.0, 1.0

    out = np.empty((frames, out_h, out_w, 3), np.uint8)
    for i in range(frames):
        a, sc = angles[i], scales[i]
        # Output pixel centre (j, k) -> source point centre + sc * R(a) @ (j - (w-1)/2, k - (h-1)/2),
        # using continuous coordinates where pixel p covers [p, p+1) (hence the 0.5 shifts).
        r = sc * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        offset = centres[i] - r @ np.array([(out_w - 1) / 2.0, (out_h - 1) / 2.0])
        # Into pre-shrunk pixel-index coordinates: index = continuous * f - 0.5.
        m = np.array([[r[0, 0] * fx, r[0, 1] * fx, offset[0] * fx - 0.5],
                      [r[1, 0] * fy, r[1, 1] * fy, offset[1] * fy - 0.5]])
        out[i] = cv2.warpAffine(small, m, (out_w, out_h), flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
                                borderMode=cv2.BORDER_REFLECT_101)
    return out
