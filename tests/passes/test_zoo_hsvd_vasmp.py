"""Q-DiT4SR's H-SVD (exact split, matched budget) and VaSMP (bit budget met)."""
import pytest
import torch
from zoo_support import capture_once  # noqa: F401  (autouse fixture)

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.hadamard import random_signs
from lsgq_compiler.passes.hsvd import HSVDLinear, add_block_rank1, block_size_for_budget, blockwise_rank1
from lsgq_compiler.passes.vasmp import vasmp_bits
from lsgq_compiler.plan import LayerSpec
from lsgq_compiler.qlinear import QuantLinear, quantizers_off
from lsgq_compiler.recipe_zoo import RANK32_SHARE


def _layer(n=64, k=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return QuantLinear(torch.randn(n, k, generator=g, dtype=torch.float64),
                       torch.randn(n, generator=g, dtype=torch.float64), LayerSpec("l", k, n, 4, 4))


def test_blockwise_rank1_of_rank1_tiles_is_exact():
    u, v = torch.randn(2, 3, 16, dtype=torch.float64), torch.randn(2, 3, 16, dtype=torch.float64)
    w = torch.einsum("ija,ijc->iajc", u, v).reshape(32, 48)
    bu, bv = blockwise_rank1(w, 16)
    torch.testing.assert_close(torch.einsum("ija,ijc->iajc", bu, bv).reshape(32, 48), w)


def test_hsvd_split_is_exact_in_fp():
    m = _layer()
    x = torch.randn(2, 7, 96, dtype=torch.float64) * torch.linspace(0.1, 5, 96, dtype=torch.float64)
    ref, w0 = m(x), m.effective_weight().clone()
    m.apply_smoothing(torch.rand(96, dtype=torch.float64) + 0.5)
    m.apply_lowrank(4)
    m.apply_rotation(random_signs(96, 3).double(), 32)
    r0 = m.weight.detach().clone()
    add_block_rank1(m, 16)
    assert isinstance(m, HSVDLinear) and m.blk_u.shape == (4, 6, 16)
    assert m.weight.norm() < r0.norm()  # the tiles took part of the residual
    torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)  # the low-rank split runs in float32
    torch.testing.assert_close(m.effective_weight(), w0, rtol=1e-5, atol=1e-5)


def test_matched_budget_tile_size():
    n = k = 3072
    b = block_size_for_budget(n, k, RANK32_SHARE / 2 * n * k)
    assert b == 192 and 2 * n * k / b <= RANK32_SHARE / 2 * n * k
    assert block_size_for_budget(384, 1536, RANK32_SHARE / 2 * 384 * 1536) == 192
    assert block_size_for_budget(32, 32, RANK32_SHARE / 2 * 32 * 32) is None


def test_vasmp_meets_budget_and_follows_variance():
    g = torch.Generator().manual_seed(0)
    var = {f"l{i}": float(v) for i, v in enumerate(torch.logspace(-4, 0, 12))}
    params = {k: int(p) for k, p in zip(var, torch.randint(1000, 5000, (12,), generator=g))}
    for budget in (3.0, 4.0, 4.5, 5.0):
        bits, real = vasmp_bits(var, params, budget, (3, 4, 5))
        assert set(bits.values()) <= {3, 4, 5}
        assert sum(params[k] * bits[k] for k in bits) <= budget * sum(params.values()) + 1e-9
        same = vasmp_bits(var, {k: 1000 for k in var}, budget, (3, 4, 5))[0]
        order = sorted(var, key=var.get)
        assert [same[k] for k in order] == sorted(same[k] for k in order)  # more variance, no fewer bits
    _, real = vasmp_bits(var, params, 4.0, (3, 4, 5))
    assert real["l11"] - real["l0"] == pytest.approx(0.5 * 4 / 0.30103, rel=1e-6)  # 0.5 log2(1e4)


def test_qdit4sr_on_tiny_wan():
    m, inp = tiny_wan(), wan_inputs()
    cfg = QuantConfig(recipe="qdit4sr", weight_bits=4, act_bits=4, options={"block": 16})
    qm = compile_quantized(m, inp, cfg, calib_data=[inp], progress=False)
    mods = [x for x in qm.quant_linears().values() if x.spec.quantized]
    assert mods and all(isinstance(x, HSVDLinear) and x.rot_block and x.lr_down is not None for x in mods)
    assert qm.plan.summary()["avg_weight_bits"] <= 4.0
    assert all(x.spec.weight_bits in (3, 4, 5) for x in mods)
    with quantizers_off(qm.gm), torch.no_grad():
        ref = m(**inp, return_dict=False)[0]
        assert float((qm(**inp) - ref).norm() / ref.norm()) < 1e-5
