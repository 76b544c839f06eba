"""Defining mechanisms of smoothquant, quarot, svdquant, viditq and qvd on the tiny Wan."""
import pytest
import torch
from zoo_support import capture_once  # noqa: F401  (autouse fixture)

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.passes.group_size import GroupActQuant, group_size_for
from lsgq_compiler.passes.lowrank import rank_for_share
from lsgq_compiler.passes.mixed_precision import decouple
from lsgq_compiler.passes.qvd import ChannelStaticQuant, ClippedTokenQuant, scri_scale
from lsgq_compiler.qlinear import quantizers_off
from lsgq_compiler.recipe_zoo import RANK32_SHARE


@pytest.fixture(scope="module")
def wan():
    m = tiny_wan()
    inp = wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in (2, 3)]
    with torch.no_grad():
        ref = m(**inp, return_dict=False)[0]
    weights = {k[: -len(".weight")]: v.detach().clone() for k, v in m.state_dict().items() if k.endswith(".weight")}
    return m, inp, calib, ref, weights


def _compile(wan, recipe, bits=4, **kw):
    m, inp, calib, _, _ = wan
    return compile_quantized(m, inp, QuantConfig(recipe=recipe, weight_bits=bits, act_bits=bits, **kw),
                             calib_data=calib, progress=False)


def _fp_rel_err(qm, wan):
    _, inp, _, ref, _ = wan
    with quantizers_off(qm.gm), torch.no_grad():
        out = qm(**inp)
    return float((out - ref).norm() / ref.norm())


def test_smoothing_leaves_fp_output_unchanged(wan):
    qm = _compile(wan, "smoothquant")
    mods = [m for m in qm.quant_linears().values() if m.spec.quantized]
    assert mods and all(m.smooth is not None and m.spec.smooth_alpha == 0.5 for m in mods)
    assert any(not torch.allclose(m.smooth, torch.ones_like(m.smooth)) for m in mods)
    assert _fp_rel_err(qm, wan) < 1e-5


def test_quarot_rotation_is_exact_in_fp(wan):
    qm = _compile(wan, "quarot")
    mods = [m for m in qm.quant_linears().values() if m.spec.quantized]
    assert mods and all(m.rot_block >= 8 and m.wq.symmetric and m.aq.symmetric for m in mods)
    assert _fp_rel_err(qm, wan) < 1e-5


def test_svdquant_split_reproduces_weight_and_groups_divide(wan):
    qm = _compile(wan, "svdquant")
    weights = wan[4]
    for path, m in qm.quant_linears().items():
        if not m.spec.quantized:
            continue
        assert m.lr_down is not None and m.smooth is not None
        torch.testing.assert_close(m.effective_weight(), weights[path], atol=1e-5, rtol=1e-5)
        assert m.in_features % m.spec.group_size == 0 and m.spec.group_size <= 64
        assert isinstance(m.aq, GroupActQuant) and m.wq.granularity == "group"
    assert _fp_rel_err(qm, wan) < 1e-5
    # the rank keeps rank 32's share at width 3072, and an absolute rank is an option
    assert RANK32_SHARE == pytest.approx(0.0208, abs=1e-4)
    assert rank_for_share(3072, 3072, RANK32_SHARE) == 32 and rank_for_share(384, 384, RANK32_SHARE) == 4
    qm2 = _compile(wan, "svdquant", options={"rank": 3})
    assert {m.spec.rank for m in qm2.quant_linears().values() if m.spec.quantized} == {3}


def test_group_size_is_the_largest_divisor_up_to_the_request():
    assert group_size_for(3072, 64) == 64 and group_size_for(32, 64) == 32 and group_size_for(96, 64) == 48
    x = torch.randn(3, 5, 96)
    y = GroupActQuant(8, 48)(x)
    assert torch.isfinite(y).all() and float((y - x).norm() / x.norm()) < 0.02


def test_viditq_metric_decoupled_mixed_precision(wan):
    scores = {"fidelity": {"a": 10.0, "b": 1.0, "c": 1.0}, "temporal": {"a": 1.0, "b": 1.0, "c": 8.0}}
    sens = decouple(scores)
    assert sens["a"] == pytest.approx(10 / 12) and sens["c"] == pytest.approx(0.8) and sens["b"] < sens["c"]
    qm = _compile(wan, "viditq", bits=6)
    q = qm.plan.quantized_layers()
    assert {s.weight_bits for s in q} <= {5, 6, 7} and len({s.weight_bits for s in q}) > 1
    assert qm.plan.summary()["avg_weight_bits"] <= 6.0
    assert all(set(s.extra["metric_scores"]) == {"fidelity", "temporal", "detail"} for s in q)
    assert all(m.smooth is not None and m.rot_block for m in qm.quant_linears().values() if m.spec.quantized)
    assert _fp_rel_err(qm, wan) < 1e-5
    q8 = _compile(wan, "viditq", bits=8).plan.quantized_layers()
    assert {s.weight_bits for s in q8} == {8}


def test_qvd_scri_is_exact_and_integrates_ranges(wan):
    r = torch.tensor([0.01, 1.0, 100.0])
    s = scri_scale(r, 1.0)
    assert torch.allclose(r / s, torch.ones(3), rtol=1e-5)  # beta = 1: every channel at the geometric mean
    assert torch.allclose(scri_scale(r, 0.0), torch.ones(3))
    qm = _compile(wan, "qvd")
    q = qm.plan.quantized_layers()
    assert all(s.extra["scri"]["coverage_after"] >= s.extra["scri"]["coverage_before"] for s in q)
    assert any(s.extra["scri"]["beta"] > 0 for s in q)
    assert _fp_rel_err(qm, wan) < 1e-5


def test_qvd_htdq_handles_skewed_and_temporal_features(wan):
    qm = _compile(wan, "qvd")
    ffn2 = [m for p, m in qm.quant_linears().items() if p.endswith("ffn.net.2")]
    assert ffn2 and all(isinstance(m.aq, ClippedTokenQuant) and m.spec.extra["htdq"]["skewness"] > 1 for m in ffn2)
    x = torch.cat([torch.rand(4, 60) * 3, torch.full((4, 4), 20.0)], dim=1)  # dense body, long tail
    body = slice(0, 60)
    err = {rho: float((ClippedTokenQuant(4, rho, 1)(x) - x)[:, body].pow(2).mean()) for rho in (1.0, 0.5)}
    assert err[0.5] < err[1.0]  # clipping the tail gives the body more levels
    keep = tuple(f for f in QuantConfig().keep_fp if f not in ("condition_embedder", "time_embed", "time_proj"))
    qm_t = _compile(wan, "qvd", bits=8, keep_fp=keep)
    temporal = [m for p, m in qm_t.quant_linears().items() if "time_embedder" in p or "time_proj" in p]
    assert temporal and all(isinstance(m.aq, ChannelStaticQuant) for m in temporal)
    assert qm_t.info["notes"]["htdq"]["temporal"] == len(temporal)
