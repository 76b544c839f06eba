"""Fixed clip sets: calibration, evaluation (synthetic, with ground truth) and real LQ clips.

Synthetic sets are pan/zoom clips (``synth.pan_zoom_clip``) over ``skimage.data``
photographs, degraded with ``degrade.degrade_clip``. The photos are split once and for
all so that evaluation never sees content used for calibration or training:

* ``CALIBRATION_PHOTOS`` - 4 colour photos and 4 gray ones (3-channel gray).
* ``EVAL_PHOTOS`` - 4 colour photos and 2 gray ones, held out.
* ``motorcycle_right`` is held out too: it is the other half of the ``motorcycle_left``
  stereo pair (same scene), so it may appear in neither calibration nor training.
* :func:`training_photos` - every bundled photo that is not held out; it includes the
  calibration photos (training and calibration may share content, evaluation may not).

With more clips than photos, photos are reused in order with different camera paths.
Every clip's camera path and degradation come from per-clip seeds derived from
``(seed, clip index, set)``, so a set is bit-identical for a given ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lsgq_compiler.vsr.data.degrade import DegradeConfig, degrade_clip
from lsgq_compiler.vsr.data.io import ClipError, _err, fit_clip, read_clip
from lsgq_compiler.vsr.data.synth import load_photo, pan_zoom_clip, photo_names

__all__ = ["Clip", "CALIBRATION_PHOTOS", "EVAL_PHOTOS", "HELD_OUT_PHOTOS", "calibration_set", "eval_set",
           "training_photos", "real_clip_paths", "real_clips"]

CALIBRATION_PHOTOS: tuple[str, ...] = ("astronaut", "chelsea", "retina", "hubble_deep_field",
                                       "grass", "camera", "gravel", "clock")
EVAL_PHOTOS: tuple[str, ...] = ("coffee", "rocket", "motorcycle_left", "immunohistochemistry", "brick", "coins")
#: Photos never used outside evaluation (the eval photos and the near-duplicate of one of them).
HELD_OUT_PHOTOS: tuple[str, ...] = EVAL_PHOTOS + ("motorcycle_right",)

REAL_LQ_DIR: Path = Path(__file__).resolve().parent / "real_lq"
_CALIB_TAG, _EVAL_TAG = 0xCA1B, 0xE7A1


@dataclass
class Clip:
    """One clip of a set.

    Attributes:
        name: unique, readable name (e.g. ``calib_00_astronaut``, ``real_003``).
        hq: ``(T, H, W, 3)`` ``uint8`` ground truth, or None for real clips (no ground truth).
        lq: ``(T, H / scale, W / scale, 3)`` ``uint8`` low-quality input.
    """

    name: str
    hq: np.ndarray | None
    lq: np.ndarray

    def __post_init__(self) -> None:
        for what, x in (("lq", self.lq), ("hq", self.hq)):
            if x is None and what == "hq":
                continue
            if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
                desc = f"{x.dtype} {x.shape}" if isinstance(x, np.ndarray) else type(x).__name__
                raise _err(f"Clip {self.name!r}: {what} is {desc}, expected uint8 (T, H, W, 3).",
                           "Build clips from read_clip / degrade_clip outputs.")
        if self.hq is not None and self.hq.shape[0] != self.lq.shape[0]:
            raise _err(f"Clip {self.name!r}: hq has {self.hq.shape[0]} frames, lq {self.lq.shape[0]}.",
                       "Give hq and lq the same number of frames.")

    @property
    def frames(self) -> int:
        """Number of frames T."""
        return int(self.lq.shape[0])


def training_photos() -> list[str]:
    """Photos usable for training: all bundled photos except the held-out (eval) ones.

    Includes the calibration photos.
    """
    return [n for n in photo_names() if n not in HELD_OUT_PHOTOS]


def _clip_seeds(seed: int, index: int, tag: int) -> tuple[int, int]:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise _err(f"seed={seed!r} must be a non-negative integer.", "Pass an int seed such as 0 or 1.")
    pan, deg = np.random.SeedSequence([int(seed), index, tag]).generate_state(2)
    return int(pan), int(deg)


def _synthetic_set(prefix: str, photos: tuple[str, ...], tag: int, n_clips: int, frames: int,
                   size: tuple[int, int], seed: int, config: DegradeConfig | None) -> list[Clip]:
    if n_clips < 1:
        raise _err(f"{prefix} set: n_clips={n_clips} must be >= 1.", "Ask for at least one clip.")
    scale = (config or DegradeConfig()).scale
    h, w = int(size[0]), int(size[1])
    if h % scale or w % scale:
        raise _err(f"{prefix} set: size {size} is not divisible by scale={scale}.",
                   "Pass an HQ size that is a multiple of 16 (e.g. (128, 128)).")
    clips = []
    for i in range(n_clips):
        photo = photos[i % len(photos)]
        pan_seed, deg_seed = _clip_seeds(seed, i, tag)
        hq = pan_zoom_clip(load_photo(photo), frames, (h, w), seed=pan_seed)
        clips.append(Clip(name=f"{prefix}_{i:02d}_{photo}", hq=hq, lq=degrade_clip(hq, deg_seed, config)))
    return clips


def calibration_set(n_clips: int = 8, frames: int = 8, size: tuple[int, int] = (128, 128), seed: int = 0,
                    config: DegradeConfig | None = None) -> list[Clip]:
    """Synthetic clips for calibration, from ``CALIBRATION_PHOTOS`` only.

    Args:
        n_clips: number of clips (photos are reused, with new camera paths, past 8).
        frames: frames per clip T.
        size: HQ ``(H, W)``; divisible by the degradation scale (a multiple of 16 suits the models).
        seed: set seed; the same seed gives bit-identical clips.
        config: degradation ranges (``DegradeConfig()`` if None).

    Returns:
        ``n_clips`` clips, hq ``(T, H, W, 3)``, lq ``(T, H/4, W/4, 3)``, both ``uint8``.
    """
    return _synthetic_set("calib", CALIBRATION_PHOTOS, _CALIB_TAG, n_clips, frames, size, seed, config)


def eval_set(n_clips: int = 6, frames: int = 8, size: tuple[int, int] = (128, 128), seed: int = 1,
             config: DegradeConfig | None = None) -> list[Clip]:
    """Synthetic clips for evaluation, from the held-out ``EVAL_PHOTOS`` only.

    Same arguments and shapes as :func:`calibration_set`.
    """
    return _synthetic_set("eval", EVAL_PHOTOS, _EVAL_TAG, n_clips, frames, size, seed, config)


def real_clip_paths() -> list[Path]:
    """The seven bundled real low-quality mp4 clips (``real_lq/001.mp4`` ... ``007.mp4``)."""
    paths = sorted(REAL_LQ_DIR.glob("*.mp4"))
    if not paths:
        raise _err(f"no real clips found in {REAL_LQ_DIR}.",
                   "Reinstall the package (package-data real_lq/*.mp4) or copy /work/shared/data/real_lq/*.mp4 there.")
    return paths


def real_clips(frames: int | None = 16, multiple: int = 16, max_size: int | None = None,
               scale: int = 4) -> list[Clip]:
    """The seven real low-quality clips (no ground truth), cropped for an x``scale`` model.

    ``multiple`` and ``max_size`` are in OUTPUT (super-resolved) pixels, which is what the
    model constrains: the LQ frames are centre-cropped so that ``scale * H`` and
    ``scale * W`` are multiples of ``multiple`` (i.e. LQ H, W multiples of
    ``multiple // scale``: 4 for the default 16) and at most ``max_size``.

    Args:
        frames: keep the first ``frames`` frames of every clip (all clips have >= 32);
            None keeps all of them (32 to 100).
        multiple: the output size multiple; must be divisible by ``scale``.
        max_size: cap on the output H and W (None: no cap); LQ is capped at ``max_size // scale``.
        scale: the model's upscaling factor.

    Returns:
        7 clips named ``real_001`` ... ``real_007``, ``hq=None``, lq ``(T, h, w, 3)`` ``uint8``.
    """
    if scale < 1 or multiple < scale or multiple % scale:
        raise _err(f"real_clips: multiple={multiple} is not a multiple of scale={scale}.",
                   "multiple is in output pixels: pass a multiple of the scale, e.g. 16 for x4.")
    lq_max = None
    if max_size is not None:
        lq_max = max_size // scale
    clips = []
    for path in real_clip_paths():
        lq = read_clip(path, max_frames=frames)
        try:
            lq = fit_clip(lq, frames, multiple=multiple // scale, max_size=lq_max, min_size=max(1, 64 // scale))
        except ClipError as e:
            raise ClipError(f"real clip {path.name} (sizes below are LQ pixels, output = x{scale}): {e}") from e
        clips.append(Clip(name=f"real_{path.stem}", hq=None, lq=lq))
    return clips
