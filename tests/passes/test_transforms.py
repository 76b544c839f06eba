"""Rotation, low-rank split and smoothing are exact in full precision."""
import pytest
import torch

from lsgq_compiler.hadamard import fwht, hadamard_block_size, random_signs, rotate, unrotate
from lsgq_compiler.plan import LayerSpec
from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.passes.lowrank import rank_for_share
from lsgq_compiler.passes.smooth import smoothing_scale


def _layer(n=48, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return QuantLinear(torch.randn(n, k, generator=g), torch.randn(n, generator=g), LayerSpec("l", k, n, 4, 4))


def test_fwht_is_orthonormal_hadamard():
    h = fwht(torch.eye(8, dtype=torch.float64), 8)
    torch.testing.assert_close(h @ h.T, torch.eye(8, dtype=torch.float64))
    assert torch.allclose(h.abs(), torch.full((8, 8), 8 ** -0.5, dtype=torch.float64))


@pytest.mark.parametrize("k", [64, 96, 384, 1536])  # 96 = 32*3, 384 = 128*3: block-diagonal
def test_rotation_leaves_fp_linear_output_unchanged(k):
    m = _layer(32, k)
    x = torch.randn(3, 10, k)
    ref = m(x)
    block = hadamard_block_size(k)
    assert block == k & -k
    m.apply_rotation(random_signs(k, 1), block)
    out = m(x)
    assert ((out - ref).norm() / ref.norm()).item() <= 1e-5
    torch.testing.assert_close(unrotate(rotate(x, m.rot_signs, block), m.rot_signs, block), x, atol=1e-5, rtol=0)


def test_lowrank_split_reproduces_weight_exactly():
    m = _layer()
    w0 = m.weight.detach().clone()
    m.apply_lowrank(8)
    assert m.lr_down.shape == (8, 96) and m.lr_up.shape == (48, 8)
    torch.testing.assert_close(m.weight + m.lr_up @ m.lr_down, w0, atol=1e-6, rtol=0)
    torch.testing.assert_close(m.effective_weight(), w0, atol=1e-6, rtol=0)


def test_smooth_lowrank_rotate_compose_exactly():
    m = _layer()
    x = torch.randn(4, 96) * torch.linspace(0.1, 10, 96)
    ref = m(x)
    m.apply_smoothing(smoothing_scale(x.abs().amax(0), m.weight, 0.5))
    m.apply_lowrank(4)
    m.apply_rotation(random_signs(96, 0), 32)
    assert ((m(x) - ref).norm() / ref.norm()).item() <= 1e-5
    with pytest.raises(RuntimeError, match="before"):
        m.apply_lowrank(4) if False else m.apply_smoothing(torch.ones(96))


def test_rank_for_share_matches_paper_share():
    r = rank_for_share(3072, 3072, 0.0104)  # the paper: rank 32 at width 3072 = 2% of the layer
    assert r == 16 or abs(r * 2 * 3072 / 3072**2 - 0.0104) < 0.002
    assert rank_for_share(3072, 3072, 2 * 32 / 3072) == 32
    assert rank_for_share(8, 8, 0.02) == 1  # at least rank 1


def test_rotation_block_cap_follows_the_target():
    """CUDA deploy targets cap Hadamard blocks at 128 (the fused prologue's block); ``sim`` and the
    CPU keep the largest power of two; ``options["hadamard_max_block"]`` overrides both."""
    from lsgq_compiler import QuantConfig
    from lsgq_compiler.hadamard import hadamard_block_size
    from lsgq_compiler.passes.infra import PassContext
    from lsgq_compiler.passes.rotate import default_max_block

    def cap(target, **opts):
        return default_max_block(PassContext(QuantConfig(recipe="lsgquant", target=target, options=opts), None))

    assert cap("cuda-sm90") == 128 and cap("cuda-sm90-g128") == 128 and cap("cuda-sm80") == 128
    assert cap("sim") is None and cap("cpu") is None
    assert cap("cuda-sm90", hadamard_max_block=4096) == 4096 and cap("sim", hadamard_max_block=64) == 64
    assert hadamard_block_size(12288, cap("cuda-sm90")) == 128 and hadamard_block_size(12288, cap("sim")) == 4096
