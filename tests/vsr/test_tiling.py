"""Tiled inference: exact where tiles do not overlap, any size and frame count handled."""
import numpy as np
import pytest

from lsgq_compiler.vsr.tiling import run_tiled


def nearest_x4(tile: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(tile, 4, axis=1), 4, axis=2)


@pytest.mark.parametrize("shape", [(8, 32, 32), (8, 50, 70), (3, 16, 20), (12, 40, 33), (2, 64, 64)])
def test_tiled_equals_whole_for_a_pointwise_model(shape):
    """A position-independent model gives the same result tiled or whole, whatever the size."""
    rng = np.random.default_rng(0)
    lq = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
    calls = []

    def fn(t):
        assert t.shape == (8, 32, 32, 3)  # the static shape the model was captured at
        calls.append(1)
        return nearest_x4(t)

    out = run_tiled(fn, lq, frames=8, tile=32)
    assert out.shape == (shape[0], shape[1] * 4, shape[2] * 4, 3)
    np.testing.assert_array_equal(out, nearest_x4(lq))
    assert len(calls) >= 1


def test_single_tile_is_called_once():
    lq = np.zeros((8, 32, 32, 3), np.uint8)
    n = []
    run_tiled(lambda t: (n.append(1), nearest_x4(t))[1], lq, 8, 32)
    assert len(n) == 1
