"""Synthetic degradation and the bicubic baseline (lsgq_compiler.vsr.data.degrade)."""
from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from lsgq_compiler.vsr.data import ClipError, DegradeConfig, bicubic_upscale, degrade_clip, load_photo, pan_zoom_clip, \
    sample_degradation
from lsgq_compiler.vsr.metrics import psnr_video


@pytest.fixture(scope="module")
def hq() -> np.ndarray:
    return pan_zoom_clip(load_photo("astronaut"), 8, (128, 128), seed=0)


def test_shapes(hq):
    lq = degrade_clip(hq, seed=0)
    assert lq.shape == (8, 32, 32, 3) and lq.dtype == np.uint8
    assert degrade_clip(hq, seed=0, config=DegradeConfig(scale=2)).shape == (8, 64, 64, 3)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_same_seed_same_bytes(hq, seed):
    first = degrade_clip(hq, seed)
    for _ in range(3):
        assert degrade_clip(hq, seed).tobytes() == first.tobytes()


def test_different_seeds_differ(hq):
    outs = [degrade_clip(hq, s).tobytes() for s in range(4)]
    assert len(set(outs)) == 4


def test_every_stage_changes_the_result(hq):
    base = dict(noise_prob=0.0, jpeg_prob=0.0, h264_prob=0.0)
    clean = degrade_clip(hq, 3, DegradeConfig(**base))
    for stage in ("noise_prob", "jpeg_prob", "h264_prob"):
        cfg = DegradeConfig(**{**base, stage: 1.0}, noise_sigma=(4.0, 8.0))
        assert not np.array_equal(degrade_clip(hq, 3, cfg), clean), stage


def test_parameters_stay_in_range():
    cfg = DegradeConfig()
    seen_modes, seen_crf, seen_jpeg = set(), set(), set()
    for s in range(200):
        p = sample_degradation(s, cfg)
        assert cfg.blur_sigma[0] <= p.blur_sigma_x <= cfg.blur_sigma[1]
        assert cfg.blur_sigma[0] <= p.blur_sigma_y <= cfg.blur_sigma[1]
        assert p.noise_sigma == 0.0 or cfg.noise_sigma[0] <= p.noise_sigma <= cfg.noise_sigma[1]
        assert p.jpeg_quality is None or cfg.jpeg_quality[0] <= p.jpeg_quality <= cfg.jpeg_quality[1]
        assert p.crf is None or cfg.h264_crf[0] <= p.crf <= cfg.h264_crf[1]
        seen_modes.add(p.resize_mode)
        seen_crf.add(p.crf)
        seen_jpeg.add(p.jpeg_quality)
    assert seen_modes == set(cfg.resize_modes)
    assert None in seen_crf and {18, 28} <= seen_crf  # both ends of the integer range are reachable
    assert None in seen_jpeg and {50, 95} <= seen_jpeg
    assert sample_degradation(5, cfg) == sample_degradation(5, cfg)


def test_probabilities_zero_switch_stages_off():
    cfg = DegradeConfig(noise_prob=0, jpeg_prob=0, h264_prob=0, aniso_prob=0)
    for s in range(20):
        p = sample_degradation(s, cfg)
        assert p.noise_sigma == 0 and p.jpeg_quality is None and p.crf is None
        assert p.blur_sigma_x == p.blur_sigma_y


def test_degradation_is_moderate(hq):
    # Learnable, not destroyed: the LQ stays close to a clean area downsample, and bicubic
    # upscaling of it is a sensible (but beatable) baseline.
    clean = np.stack([cv2.resize(f, (32, 32), interpolation=cv2.INTER_AREA) for f in hq])
    for s in range(6):
        lq = degrade_clip(hq, s)
        assert psnr_video(clean, lq) > 23
        assert 19 < psnr_video(hq, bicubic_upscale(lq)) < 35


def test_h264_handles_odd_lq_sizes():
    hq = pan_zoom_clip(load_photo("coffee"), 4, (132, 100), seed=0)
    lq = degrade_clip(hq, 1, DegradeConfig(h264_prob=1.0))
    assert lq.shape == (4, 33, 25, 3)


def test_fast_enough(hq):
    degrade_clip(hq, 0)  # warm-up (imports, codec registration)
    best = min(_timed(lambda: degrade_clip(hq, s)) for s in range(3))
    assert best < 0.5


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def test_size_not_divisible_by_scale(hq):
    with pytest.raises(ClipError, match="not divisible by scale=4") as e:
        degrade_clip(hq[:, :126], 0)
    assert "fit_clip" in str(e.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(scale=0), "scale"),
    (dict(blur_sigma=(1.5, 0.2)), "blur_sigma"),
    (dict(noise_prob=1.5), "noise_prob"),
    (dict(jpeg_quality=(50, 101)), "jpeg_quality"),
    (dict(h264_crf=(18.5, 28)), "h264_crf"),
    (dict(resize_modes=("nearest",)), "resize_modes"),
    (dict(h264_preset="fastest"), "h264_preset"),
])
def test_config_validation(kwargs, match):
    with pytest.raises(ClipError, match=match):
        DegradeConfig(**kwargs)


def test_bad_seed(hq):
    with pytest.raises(ClipError, match="non-negative integer"):
        degrade_clip(hq, -1)


def test_bicubic_upscale():
    lq = np.random.default_rng(0).integers(0, 256, (3, 20, 24, 3), dtype=np.uint8)
    up = bicubic_upscale(lq)
    assert up.shape == (3, 80, 96, 3) and up.dtype == np.uint8
    assert bicubic_upscale(lq[0], scale=2).shape == (40, 48, 3)
    flat = np.full((2, 8, 8, 3), 77, np.uint8)
    assert np.array_equal(bicubic_upscale(flat), np.full((2, 32, 32, 3), 77, np.uint8))
    # cv2 INTER_CUBIC, frame by frame
    assert np.array_equal(up[1], cv2.resize(lq[1], (96, 80), interpolation=cv2.INTER_CUBIC))
