"""Data for video super-resolution: clip I/O, synthetic clips, degradation and fixed sets.

Frames are numpy ``uint8`` arrays shaped ``(T, H, W, 3)`` in RGB order throughout.

* ``io``: :func:`read_clip`, :func:`list_clips`, :func:`write_video`, :func:`write_frames`,
  :func:`fit_clip`, :class:`ClipError`.
* ``synth``: :func:`photo_names`, :func:`load_photo`, :func:`pan_zoom_clip` (real photos
  from ``skimage.data`` filmed by a seeded virtual camera).
* ``degrade``: :class:`DegradeConfig`, :func:`degrade_clip` (blur, x4 down, noise, JPEG,
  H.264), :func:`bicubic_upscale` (the baseline).
* ``sets``: :class:`Clip`, :func:`calibration_set`, :func:`eval_set` (disjoint photos),
  :func:`training_photos`, :func:`real_clips` (7 real LQ clips, no ground truth).

Video metrics (SSIM, PSNR over a video, flow-warping error) are in ``lsgq_compiler.vsr.metrics``.
"""
from lsgq_compiler.vsr.data.degrade import DegradeConfig, DegradeParams, bicubic_upscale, degrade_clip, sample_degradation
from lsgq_compiler.vsr.data.io import ClipError, fit_clip, list_clips, read_clip, write_frames, write_video
from lsgq_compiler.vsr.data.sets import (CALIBRATION_PHOTOS, EVAL_PHOTOS, HELD_OUT_PHOTOS, Clip, calibration_set, eval_set,
                                     real_clip_paths, real_clips, training_photos)
from lsgq_compiler.vsr.data.synth import load_photo, pan_zoom_clip, photo_names

__all__ = [
    "ClipError", "read_clip", "list_clips", "write_video", "write_frames", "fit_clip",
    "photo_names", "load_photo", "pan_zoom_clip",
    "DegradeConfig", "DegradeParams", "sample_degradation", "degrade_clip", "bicubic_upscale",
    "Clip", "CALIBRATION_PHOTOS", "EVAL_PHOTOS", "HELD_OUT_PHOTOS", "calibration_set", "eval_set",
    "training_photos", "real_clip_paths", "real_clips",
]
