"""Calibration, evaluation and real clip sets (lsgq_compiler.vsr.data.sets)."""
from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest

from lsgq_compiler.vsr.data import CALIBRATION_PHOTOS, EVAL_PHOTOS, HELD_OUT_PHOTOS, Clip, ClipError, calibration_set, \
    eval_set, load_photo, photo_names, real_clip_paths, real_clips, training_photos


@pytest.fixture(scope="module")
def calib() -> list[Clip]:
    return calibration_set()


@pytest.fixture(scope="module")
def evals() -> list[Clip]:
    return eval_set()


def _photo(clip: Clip) -> str:
    return clip.name.split("_", 2)[2]


def test_calibration_set_shapes(calib):
    assert len(calib) == 8
    assert len({c.name for c in calib}) == 8
    for c in calib:
        assert c.hq.shape == (8, 128, 128, 3) and c.lq.shape == (8, 32, 32, 3)
        assert c.hq.dtype == c.lq.dtype == np.uint8 and c.frames == 8


def test_eval_set_shapes(evals):
    assert len(evals) == 6
    for c in evals:
        assert c.hq.shape == (8, 128, 128, 3) and c.lq.shape == (8, 32, 32, 3)


def test_photo_sets_are_disjoint(calib, evals):
    assert not set(CALIBRATION_PHOTOS) & set(EVAL_PHOTOS)
    assert not set(training_photos()) & set(HELD_OUT_PHOTOS)
    assert set(CALIBRATION_PHOTOS) <= set(training_photos())
    assert set(CALIBRATION_PHOTOS) | set(HELD_OUT_PHOTOS) <= set(photo_names())
    assert {_photo(c) for c in calib} <= set(CALIBRATION_PHOTOS)
    assert {_photo(c) for c in evals} <= set(EVAL_PHOTOS)
    assert {_photo(c) for c in calibration_set(n_clips=10, frames=2, size=(64, 64))} <= set(CALIBRATION_PHOTOS)


@functools.lru_cache(maxsize=None)
def _thumb(name: str) -> np.ndarray:
    g = cv2.resize(load_photo(name).mean(2).astype(np.float32), (32, 32), interpolation=cv2.INTER_AREA).ravel()
    g = g - g.mean()
    return g / np.linalg.norm(g)


def test_no_near_duplicate_photo_crosses_the_split():
    # The detector is meaningful: it flags the stereo pair (same scene, two viewpoints) ...
    assert _thumb("motorcycle_left") @ _thumb("motorcycle_right") > 0.6
    # ... and no training/calibration photo looks like a held-out one.
    for a in set(training_photos()) | set(CALIBRATION_PHOTOS):
        for b in HELD_OUT_PHOTOS:
            assert _thumb(a) @ _thumb(b) < 0.6, (a, b)  # identical photos would score 1.0


def test_sets_are_deterministic_and_seeded():
    a = calibration_set(n_clips=3, frames=4, size=(64, 64), seed=0)
    b = calibration_set(n_clips=3, frames=4, size=(64, 64), seed=0)
    c = calibration_set(n_clips=3, frames=4, size=(64, 64), seed=1)
    for x, y, z in zip(a, b, c):
        assert x.name == y.name and np.array_equal(x.hq, y.hq) and np.array_equal(x.lq, y.lq)
        assert not np.array_equal(x.hq, z.hq)


def test_eval_differs_from_calibration(calib, evals):
    for c in calib:
        for e in evals:
            assert not np.array_equal(c.hq, e.hq)


def test_set_errors():
    with pytest.raises(ClipError, match="not divisible by scale"):
        calibration_set(n_clips=1, size=(130, 128))
    with pytest.raises(ClipError, match="n_clips"):
        eval_set(n_clips=0)


def test_real_clips_load():
    assert [p.name for p in real_clip_paths()] == [f"00{i}.mp4" for i in range(1, 8)]
    clips = real_clips()
    assert len(clips) == 7
    for c in clips:
        assert c.hq is None and c.name.startswith("real_")
        t, h, w, ch = c.lq.shape
        assert (t, ch) == (16, 3) and c.lq.dtype == np.uint8
        assert h % 4 == 0 and w % 4 == 0 and (4 * h) % 16 == 0  # LQ multiple of 16 // 4
        assert c.lq.std() > 5  # real content


def test_real_clips_sizes_and_options():
    full = real_clips(frames=None)
    assert [c.frames for c in full] == [100, 32, 50, 50, 100, 100, 33]
    assert full[1].lq.shape[1:3] == (180, 316)  # 318x180 cropped to a multiple of 4 in width
    capped = real_clips(frames=4, multiple=32, max_size=256)
    for c in capped:
        assert c.lq.shape[0] == 4
        assert c.lq.shape[1] <= 64 and c.lq.shape[2] <= 64 and c.lq.shape[1] % 8 == 0
    with pytest.raises(ClipError, match="not a multiple of scale"):
        real_clips(multiple=18)
    with pytest.raises(ClipError, match="asked for 40 frames but the clip has 32"):
        real_clips(frames=40)


def test_clip_validation():
    lq = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ClipError, match="lq is float32"):
        Clip("x", None, lq.astype(np.float32))
    with pytest.raises(ClipError, match="frames"):
        Clip("x", np.zeros((3, 32, 32, 3), np.uint8), lq)
