"""bench/tiny_vsr_zoom.py: the grid score sees 8-pixel block seams and nothing else; bad --weights is refused."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("tiny_vsr_zoom", ROOT / "bench" / "tiny_vsr_zoom.py")
zoom = importlib.util.module_from_spec(spec)
spec.loader.exec_module(zoom)


def test_space8_is_one_without_seams_and_large_with_8_pixel_blocks():
    rng = np.random.default_rng(0)
    hq = rng.integers(60, 196, (4, 64, 64, 3)).astype(np.uint8)
    noise = rng.normal(0, 4, hq.shape)
    smooth = np.clip(hq + noise, 0, 255).astype(np.uint8)
    assert abs(zoom.space8(smooth, hq) - 1.0) < 0.05  # i.i.d. error: the same jump at every border
    blocks = rng.normal(0, 6, (4, 8, 8, 3)).repeat(8, 1).repeat(8, 2)  # one offset per 8x8 block
    seamed = np.clip(hq + noise + blocks, 0, 255).astype(np.uint8)
    assert zoom.space8(seamed, hq) > 1.5


def test_bad_weights_argument_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="NAME=FILE"):
        zoom.main(["--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "z")])
