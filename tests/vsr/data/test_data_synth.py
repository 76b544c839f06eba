"""Bundled photographs and pan/zoom clips (lsgq_compiler.vsr.data.synth)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from lsgq_compiler.vsr.data import ClipError, load_photo, pan_zoom_clip, photo_names
from lsgq_compiler.vsr.data.synth import COLOR_PHOTOS, GRAY_PHOTOS


def test_photo_list():
    names = photo_names()
    assert len(names) == len(set(names)) >= 15
    for n in ("astronaut", "coffee", "chelsea", "rocket", "motorcycle_left", "immunohistochemistry"):
        assert n in names
    assert "colorwheel" not in names  # synthetic
    assert "cat" not in names  # the same image as chelsea


def test_cat_is_chelsea():  # why "cat" is left out
    import skimage.data

    assert np.array_equal(skimage.data.cat(), skimage.data.chelsea())


@pytest.mark.parametrize("name", photo_names())
def test_photos_load_offline_as_rgb(name):
    img = load_photo(name)
    assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3
    assert min(img.shape[:2]) >= 128
    gray = np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert gray == (name in GRAY_PHOTOS)
    assert img.std() > 10  # real content, not a flat image
    assert (name in COLOR_PHOTOS) != (name in GRAY_PHOTOS)


def test_load_photo_returns_copies():
    a = load_photo("astronaut")
    a[:] = 0
    assert load_photo("astronaut").max() > 0


def test_unknown_photo():
    with pytest.raises(ClipError, match="unknown photo 'lena'"):
        load_photo("lena")


def test_pan_zoom_shape_and_determinism():
    img = load_photo("coffee")
    a = pan_zoom_clip(img, 6, (96, 128), seed=5)
    assert a.shape == (6, 96, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, pan_zoom_clip(img, 6, (96, 128), seed=5))
    assert not np.array_equal(a, pan_zoom_clip(img, 6, (96, 128), seed=6))


@pytest.mark.parametrize("seed", range(5))
def test_pan_zoom_has_smooth_subpixel_motion(seed):
    clip = pan_zoom_clip(load_photo("astronaut"), 6, (128, 128), seed=seed)
    for t in range(len(clip) - 1):
        a, b = clip[t].mean(2), clip[t + 1].mean(2)
        assert not np.array_equal(a, b)
        (dx, dy), response = cv2.phaseCorrelate(a, b)
        assert response > 0.3  # the two frames are mostly one shifted image
        assert 0.2 < np.hypot(dx, dy) < 6.0  # moves, but at a realistic speed (max 3 px/frame + zoom)


def test_pan_zoom_content_comes_from_the_photo():
    img = load_photo("rocket")
    clip = pan_zoom_clip(img, 2, (64, 64), seed=0)
    # The frame mean must lie within the photo's range of 64x64 block means.
    blocks = cv2.resize(img.astype(np.float32), (img.shape[1] // 64, img.shape[0] // 64), interpolation=cv2.INTER_AREA)
    assert blocks.mean(2).min() - 20 <= clip[0].mean() <= blocks.mean(2).max() + 20


def test_pan_zoom_on_a_photo_barely_larger_than_the_output():
    img = load_photo("chelsea")[:130, :140]
    clip = pan_zoom_clip(img, 8, (128, 128), seed=1)
    assert clip.shape == (8, 128, 128, 3)


def test_pan_zoom_errors():
    img = load_photo("chelsea")
    with pytest.raises(ClipError, match="does not fit"):
        pan_zoom_clip(img, 4, (1024, 1024), seed=0)
    with pytest.raises(ClipError, match="at least 2"):
        pan_zoom_clip(img, 1, (64, 64), seed=0)
    with pytest.raises(ClipError, match="expected \\(H, W, 3\\) uint8"):
        pan_zoom_clip(img[..., 0], 4, (64, 64), seed=0)
