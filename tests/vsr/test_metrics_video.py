"""Video metrics: SSIM, whole-clip PSNR, flow-warping error (lsgq_compiler.vsr.metrics)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from lsgq_compiler.vsr.metrics import psnr_video, ssim, warp_error


def _sk_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=255, channel_axis=-1)


def _photo_pair() -> tuple[np.ndarray, np.ndarray]:
    from lsgq_compiler.vsr.data import bicubic_upscale, degrade_clip, load_photo

    hq = load_photo("astronaut")[100:228, 150:310]
    lq = degrade_clip(np.stack([hq, hq]), seed=2)
    return hq, bicubic_upscale(lq)[0]


def test_ssim_matches_skimage_on_random_images():
    rng = np.random.default_rng(0)
    for shape in ((48, 64, 3), (33, 41, 3)):
        a = rng.integers(0, 256, shape, dtype=np.uint8)
        b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, shape), 0, 255).astype(np.uint8)
        assert ssim(a, b) == pytest.approx(_sk_ssim(a, b), abs=1e-3)
        c = rng.integers(0, 256, shape, dtype=np.uint8)
        assert ssim(a, c) == pytest.approx(_sk_ssim(a, c), abs=1e-3)


def test_ssim_matches_skimage_on_natural_images():
    hq, up = _photo_pair()
    expected = _sk_ssim(hq, up)
    assert 0.3 < expected < 0.99  # a real, imperfect reconstruction
    assert ssim(hq, up) == pytest.approx(expected, abs=1e-3)


def test_ssim_of_identical_is_one_and_video_is_mean_over_frames():
    hq, up = _photo_pair()
    assert ssim(hq, hq) == pytest.approx(1.0, abs=1e-12)
    video_a, video_b = np.stack([hq, hq, up]), np.stack([up, hq, hq])
    expected = (_sk_ssim(hq, up) + 1.0 + _sk_ssim(up, hq)) / 3
    assert ssim(video_a, video_b) == pytest.approx(expected, abs=1e-3)
    assert ssim(video_a, video_b) < 1.0


def test_ssim_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        ssim(np.zeros((2, 16, 16, 3), np.uint8), np.zeros((2, 16, 17, 3), np.uint8))
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))


def test_psnr_video_known_values():
    x = np.full((4, 16, 16, 3), 100, np.uint8)
    assert psnr_video(x, x + 1) == pytest.approx(48.1308, abs=1e-3)
    assert psnr_video(x, x + 10) == pytest.approx(20 * math.log10(25.5), abs=1e-9)
    assert psnr_video(x, x) == math.inf
    # One MSE over the whole clip (not a mean of per-frame PSNRs): one frame off by 2, three exact.
    y = x.copy()
    y[0] += 2
    assert psnr_video(x, y) == pytest.approx(10 * math.log10(255**2 / 1.0), abs=1e-9)
    assert psnr_video(x[0], y[0]) == pytest.approx(10 * math.log10(255**2 / 4.0), abs=1e-9)  # (H, W, 3)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr_video(x, x[:2])


def test_warp_error_static_noise_and_pan():
    from lsgq_compiler.vsr.data import load_photo, pan_zoom_clip

    pan = pan_zoom_clip(load_photo("astronaut"), 6, (128, 128), seed=0)
    static = np.repeat(pan[:1], 6, axis=0)
    noise = np.random.default_rng(0).integers(0, 256, (6, 128, 128, 3), dtype=np.uint8)
    e_static, e_pan, e_noise = warp_error(static), warp_error(pan), warp_error(noise)
    assert e_static < 1e-3
    assert e_pan < 0.02  # the flow explains a smooth camera move
    assert e_noise > 0.2  # independent frames: nothing to explain (|U - V| averages 1/3)
    assert e_noise > 10 * e_pan


def test_warp_error_sees_flicker():
    from lsgq_compiler.vsr.data import load_photo, pan_zoom_clip

    pan = pan_zoom_clip(load_photo("coffee"), 6, (96, 96), seed=1)
    flicker = pan.astype(np.int16)
    flicker[1::2] += np.random.default_rng(0).integers(-12, 13, flicker[1::2].shape)
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    assert warp_error(flicker) > 2 * warp_error(pan)


def test_warp_error_needs_two_frames():
    with pytest.raises(ValueError, match="at least 2"):
        warp_error(np.zeros((1, 32, 32, 3), np.uint8))
