"""Synthetic real-world degradation of high-quality clips (x4 video super-resolution).

The chain follows Real-ESRGAN / RealBasicVSR / DOVE, first order only and kept moderate
so that a small model can learn to invert it:

    blur (isotropic or anisotropic Gaussian) -> x``scale`` downsample (area or bicubic)
    -> Gaussian noise (colour or gray, independent per frame) -> JPEG (per frame)
    -> real H.264 compression (libx264 through PyAV, ``threads=1``, ``asm=0``, CRF)

Every parameter is drawn once per clip from the seed (all frames of a clip share the
blur kernel, the resize mode, the noise level, the JPEG quality and the CRF), so the
degradation is temporally coherent like a real camera + codec. The same seed gives a
bit-identical result on the same machine. x264 runs its plain C code (``asm=0``) with one
thread: its SIMD build was seen to give a different bitstream for the same input once in a
few hundred encodes on an AVX-512 machine.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

from lsgq_compiler.vsr.data.io import ClipError, _err, check_frames

__all__ = ["DegradeConfig", "DegradeParams", "sample_degradation", "degrade_clip", "bicubic_upscale"]

_RESIZE_MODES = ("area", "bilinear", "bicubic")
_X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")
_H264_FPS = 16  # rate control depends a little on the frame rate: keep it fixed


@dataclass
class DegradeConfig:
    """Ranges and probabilities of the degradation; each clip draws one setting from them.

    Attributes:
        scale: downsampling factor (HQ size / LQ size).
        blur_sigma: (min, max) Gaussian blur sigma, in HQ pixels (drawn log-uniformly).
        aniso_prob: probability that the blur is anisotropic (two sigmas, random angle).
        resize_modes: downsampling filters to choose from ("area", "bilinear", "bicubic").
        noise_prob: probability of adding Gaussian noise.
        noise_sigma: (min, max) noise standard deviation, on the 0..255 scale.
        gray_noise_prob: probability that the noise is the same on R, G and B.
        jpeg_prob: probability of per-frame JPEG compression.
        jpeg_quality: (min, max) JPEG quality, integers in 1..100.
        h264_prob: probability of H.264 compression of the whole clip.
        h264_crf: (min, max) x264 constant rate factor, integers in 0..51.
        h264_preset: x264 preset.
    """

    scale: int = 4
    blur_sigma: tuple[float, float] = (0.2, 1.5)
    aniso_prob: float = 0.3
    resize_modes: tuple[str, ...] = ("area", "bicubic")
    noise_prob: float = 0.8
    noise_sigma: tuple[float, float] = (0.0, 8.0)
    gray_noise_prob: float = 0.4
    jpeg_prob: float = 0.5
    jpeg_quality: tuple[int, int] = (50, 95)
    h264_prob: float = 0.8
    h264_crf: tuple[int, int] = (18, 28)
    h264_preset: str = "medium"

    def __post_init__(self) -> None:
        def bad(what: str, todo: str) -> ClipError:
            return _err(f"DegradeConfig: {what}", todo)

        if not isinstance(self.scale, (int, np.integer)) or self.scale < 1:
            raise bad(f"scale={self.scale!r} must be an integer >= 1.", "Use scale=4 for x4 super-resolution.")
        for name in ("aniso_prob", "noise_prob", "gray_noise_prob", "jpeg_prob", "h264_prob"):
            p = getattr(self, name)
            if not 0.0 <= float(p) <= 1.0:
                raise bad(f"{name}={p!r} is not a probability.", f"Pass {name} between 0 and 1.")
        for name, lo_ok, hi_ok, integer in (("blur_sigma", 1e-3, 20.0, False), ("noise_sigma", 0.0, 255.0, False),
                                            ("jpeg_quality", 1, 100, True), ("h264_crf", 0, 51, True)):
            rng = tuple(getattr(self, name))
            if len(rng) != 2 or not (lo_ok <= rng[0] <= rng[1] <= hi_ok) or (
                    integer and not all(float(v).is_integer() for v in rng)):
                kind = "integers" if integer else "numbers"
                raise bad(f"{name}={rng!r} is not a (min, max) range within [{lo_ok}, {hi_ok}].",
                          f"Pass two {kind} with min <= max inside that interval.")
            setattr(self, name, tuple(int(v) for v in rng) if integer else tuple(float(v) for v in rng))
        modes = tuple(self.resize_modes)
        if not modes or any(m not in _RESIZE_MODES for m in modes):
            raise bad(f"resize_modes={modes!r} must be a non-empty subset of {_RESIZE_MODES}.",
                      "Pass e.g. resize_modes=('area', 'bicubic').")
        self.resize_modes = modes
        if self.h264_preset not in _X264_PRESETS:
            raise bad(f"h264_preset={self.h264_preset!r} is not an x264 preset.", f"Pick one of {_X264_PRESETS}.")


@dataclass(frozen=True)
class DegradeParams:
    """One clip's degradation, as drawn by :func:`sample_degradation`.

    ``noise_sigma == 0`` means no noise, ``jpeg_quality is None`` no JPEG and ``crf is None``
    no H.264. ``blur_angle`` is in radians; ``noise_seed`` seeds the per-frame noise.
    """

    scale: int
    blur_sigma_x: float
    blur_sigma_y: float
    blur_angle: float
    resize_mode: str
    noise_sigma: float
    gray_noise: bool
    jpeg_quality: int | None
    crf: int | None
    noise_seed: int
    h264_preset: str = "medium"

    def as_dict(self) -> dict:
        """Plain dict (JSON-friendly) of the parameters."""
        return asdict(self)


def _check_seed(seed: int) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise _err(f"seed={seed!r} must be a non-negative integer.", "Pass an int seed such as 0, 1, 2 ...")
    return int(seed)


def sample_degradation(seed: int, config: DegradeConfig | None = None) -> DegradeParams:
    """Draw one clip's degradation parameters from ``config``.

    Every parameter always takes the same slot of the random stream, so changing one
    probability or range does not reshuffle the others.

    Args:
        seed: non-negative integer.
        config: ranges and probabilities; ``DegradeConfig()`` if None.
    """
    cfg = config or DegradeConfig()
    seed = _check_seed(seed)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xDE9]))
    u = rng.random(12)
    noise_seed = int(rng.integers(0, 2**63 - 1))

    def log_uniform(x: float, lo: float, hi: float) -> float:  # small sigmas as likely as large ones
        return float(math.exp(math.log(lo) + x * (math.log(hi) - math.log(lo))))

    def int_uniform(x: float, lo: int, hi: int) -> int:
        return int(min(hi, lo + math.floor(x * (hi - lo + 1))))

    sx = log_uniform(u[0], *cfg.blur_sigma)
    aniso = u[1] < cfg.aniso_prob
    sy = log_uniform(u[2], *cfg.blur_sigma) if aniso else sx
    angle = float(u[3] * math.pi) if aniso else 0.0
    mode = cfg.resize_modes[min(len(cfg.resize_modes) - 1, int(u[4] * len(cfg.resize_modes)))]
    lo_n, hi_n = cfg.noise_sigma
    noise = float(lo_n + u[6] * (hi_n - lo_n)) if u[5] < cfg.noise_prob else 0.0
    gray = bool(u[7] < cfg.gray_noise_prob)
    jpeg = int_uniform(u[9], *cfg.jpeg_quality) if u[8] < cfg.jpeg_prob else None
    crf = int_uniform(u[11], *cfg.h264_crf) if u[10] < cfg.h264_prob else None
    return DegradeParams(scale=cfg.scale, blur_sigma_x=sx, blur_sigma_y=sy, blur_angle=angle, resize_mode=mode,
                         noise_sigma=noise, gray_noise=gray, jpeg_quality=jpeg, crf=crf, noise_seed=noise_seed,
                         h264_preset=cfg.h264_preset)


def _gaussian_kernel(sx: float, sy: float, angle: float) -> np.ndarray:
    """(k, k) float32 Gaussian kernel, k = 2 ceil(3 max sigma) + 1 (at most 21), summing to 1."""
    radius = min(10, max(1, math.ceil(3.0 * max(sx, sy))))
    ax = np.arange(-radius, radius + 1, dtype=np.float64)
    xx, yy = np.meshgrid(ax, ax)
    c, s = math.cos(angle), math.sin(angle)
    xr, yr = c * xx + s * yy, -s * xx + c * yy  # rotate into the kernel's principal axes
    k = np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))
    return (k / k.sum()).astype(np.float32)


def _h264_roundtrip(frames: np.ndarray, crf: int, preset: str) -> np.ndarray:
    """Encode (T, h, w, 3) uint8 RGB with libx264 (yuv420p, one thread) and decode it back."""
    import av

    t, h, w, _ = frames.shape
    ph, pw = h + h % 2, w + w % 2  # 4:2:0 needs even sizes: pad by edge replication, crop after
    if (ph, pw) != (h, w):
        frames = np.pad(frames, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge")
    enc = av.CodecContext.create("libx264", "w")
    enc.width, enc.height, enc.pix_fmt = pw, ph, "yuv420p"
    enc.time_base = Fraction(1, _H264_FPS)
    enc.framerate = Fraction(_H264_FPS, 1)
    # threads=1 alone is not enough: on this AVX-512 Xeon the SIMD build of x264 gave a different
    # bitstream about once in 100-300 encodes of the same input. asm=0 (x264's plain C code) was
    # bit-identical in 1000 of 1000, and at LQ sizes it costs little (~9 ms for 8 frames of 32x32).
    enc.options = {"crf": str(crf), "preset": preset, "threads": "1", "x264-params": "asm=0"}
    packets = []
    for i in range(t):
        vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frames[i]), format="rgb24").reformat(format="yuv420p")
        vf.pts = i
        packets.extend(enc.encode(vf))
    packets.extend(enc.encode(None))
    dec = av.CodecContext.create("h264", "r")
    dec.thread_count = 1
    out = []
    for p in packets:
        out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(p))
    out.extend(f.to_ndarray(format="rgb24") for f in dec.decode(None))
    if len(out) != t:
        raise RuntimeError(f"H.264 round trip returned {len(out)} frames for {t}; this is a bug in degrade.py.")
    return np.stack(out)[:, :h, :w]


def degrade_clip(hq: np.ndarray, seed: int, config: DegradeConfig | None = None) -> np.ndarray:
    """Degrade a high-quality clip into a low-quality, ``scale`` times smaller one.

    Args:
        hq: ``(T, H, W, 3)`` ``uint8`` RGB; H and W divisible by ``config.scale``.
        seed: non-negative integer; the same seed (and config) gives a bit-identical result.
        config: ranges and probabilities; ``DegradeConfig()`` (x4) if None.

    Returns:
        ``(T, H / scale, W / scale, 3)`` ``uint8`` RGB.
    """
    import cv2

    cfg = config or DegradeConfig()
    hq = check_frames(hq, "hq")
    t, h, w, _ = hq.shape
    if h % cfg.scale or w % cfg.scale:
        raise _err(f"degrade_clip: HQ frames are {w}x{h}, not divisible by scale={cfg.scale}.",
                   f"Crop first, e.g. fit_clip(hq, None, multiple={cfg.scale}) (or a multiple of 16 for the model).")
    p = sample_degradation(seed, cfg)
    lh, lw = h // cfg.scale, w // cfg.scale
    kernel = _gaussian_kernel(p.blur_sigma_x, p.blur_sigma_y, p.blur_angle)
    interp = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC}[p.resize_mode]
    lq = np.empty((t, lh, lw, 3), np.float32)
    for i in range(t):
        blurred = cv2.filter2D(hq[i].astype(np.float32), -1, kernel, borderType=cv2.BORDER_REFLECT_101)
        lq[i] = cv2.resize(blurred, (lw, lh), interpolation=interp)
    if p.noise_sigma > 0:
        nrng = np.random.default_rng(p.noise_seed)
        lq += nrng.standard_normal((t, lh, lw, 1 if p.gray_noise else 3), dtype=np.float32) * np.float32(p.noise_sigma)
    out = np.clip(np.rint(lq), 0, 255).astype(np.uint8)
    if p.jpeg_quality is not None:
        for i in range(t):
            ok, buf = cv2.imencode(".jpg", out[i, :, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, p.jpeg_quality])
            if not ok:
                raise RuntimeError("OpenCV could not JPEG-encode a frame; this is a bug in degrade.py.")
            out[i] = cv2.imdecode(buf, cv2.IMREAD_COLOR)[:, :, ::-1]
    if p.crf is not None:
        out = _h264_roundtrip(out, p.crf, p.h264_preset)
    return np.ascontiguousarray(out)


def bicubic_upscale(lq: np.ndarray, scale: int = 4) -> np.ndarray:
    """The baseline: bicubic (``cv2.INTER_CUBIC``) upscaling by ``scale``.

    Args:
        lq: ``(T, h, w, 3)`` or ``(h, w, 3)`` ``uint8`` RGB.
        scale: integer factor.

    Returns:
        ``uint8`` of the same rank, ``(T, h*scale, w*scale, 3)`` or ``(h*scale, w*scale, 3)``.
    """
    import cv2

    if not isinstance(scale, (int, np.integer)) or scale < 1:
        raise _err(f"bicubic_upscale: scale={scale!r} must be an integer >= 1.", "Pass scale=4 for x4.")
    if isinstance(lq, np.ndarray) and lq.ndim == 3:
        return bicubic_upscale(lq[None], scale)[0]
    lq = check_frames(lq, "lq")
    t, h, w, _ = lq.shape
    out = np.empty((t, h * scale, w * scale, 3), np.uint8)
    for i in range(t):
        out[i] = cv2.resize(lq[i], (w * scale, h * scale), interpolation=cv2.INTER_CUBIC)
    return out
