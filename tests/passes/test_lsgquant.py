"""The lsgquant recipe on a tiny Wan: plan contents, VOLTS tiers, frozen layers unchanged."""
import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.vsr.metrics import sqnr
from lsgq_compiler.passes.bit_allocation import allocate_bits
from lsgq_compiler.passes.sensitivity import one_at_a_time, spearman
from lsgq_compiler.passes.volts import assign_tiers
from lsgq_compiler.qlinear import quantizers_off


@pytest.fixture(scope="module")
def compiled():
    m, inp = tiny_wan(), wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in range(3)]
    qm = compile_quantized(m, inp, QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4), calib_data=calib,
                           progress=False)
    return m, inp, calib, qm


def test_plan_records_lsgquant_decisions(compiled):
    m, inp, _, qm = compiled
    q = qm.plan.quantized_layers()
    assert q and all(s.act_quantizer == "draq" and s.rotate and s.rank >= 1 for s in q)
    assert all(s.sensitivity is not None and s.tier in ("frozen", "light", "full") for s in q)
    assert {s.tier for s in q} == {"frozen", "light", "full"}
    assert all(s.extra["lowrank_share"] < 0.1 for s in q)
    with torch.no_grad():
        assert sqnr(m(**inp, return_dict=False)[0], qm(**inp)) > 20


def test_frozen_tier_parameters_do_not_change():
    m, inp = tiny_wan(), wan_inputs()
    cfg = dict(recipe="lsgquant", weight_bits=4, act_bits=4)
    untrained = compile_quantized(m, inp, QuantConfig(**cfg, options={"volts": "all_frozen"}), calib_data=[inp],
                                  progress=False)
    trained = compile_quantized(m, inp, QuantConfig(**cfg), calib_data=[inp], progress=False)
    a, b = untrained.quant_linears(), trained.quant_linears()
    n_frozen = n_trained = 0
    for path, mod in b.items():
        same = all(torch.equal(x, y) for x, y in zip(a[path].state_dict().values(), mod.state_dict().values())
                   if x is not None)
        if mod.spec.tier == "frozen":
            assert same, path
            n_frozen += 1
        elif mod.spec.tier in ("light", "full") and not same:
            n_trained += 1
    assert n_frozen > 0 and n_trained > 0


def test_allocate_bits_meets_budget_and_prefers_sensitive():
    sens = {"a": 10.0, "b": 1.0, "c": 0.01}
    params = {"a": 100, "b": 100, "c": 100}
    bits = allocate_bits(sens, params, (4, 6, 8), 6.0, {k: 6 for k in sens})
    assert sum(params[k] * bits[k] for k in bits) / 300 <= 6.0
    assert bits["a"] >= bits["b"] >= bits["c"] and bits["a"] > bits["c"]


def test_tiers_fall_back_to_percentiles():
    sens = {f"l{i}": 1.0 + i * 1e-3 for i in range(10)}  # all near the max: paper thresholds put all in "full"
    tiers, how = assign_tiers(sens, (0.001, 0.075), (0.3, 0.8))
    assert how == "percentile" and list(tiers.values()).count("frozen") == 3


def test_spearman_and_ground_truth(compiled):
    assert spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    _, _, calib, qm = compiled
    with quantizers_off(qm.gm), torch.no_grad():
        fp = [qm(**calib[0])]
    gt = one_at_a_time(qm.gm, [((), calib[0])], fp, progress=False)
    assert len(gt) == len(qm.plan.quantized_layers()) and all(v > 0 for v in gt.values())


def test_qao_trains_full_tier_first_most_sensitive_first(compiled):
    # under a time budget the layers trained are the ones that matter most
    specs = sorted((s for s in compiled[3].plan.quantized_layers() if s.train_iters > 0),
                   key=lambda s: s.extra["qao"]["order"])
    assert len(specs) > 2 and [s.extra["qao"]["order"] for s in specs] == list(range(len(specs)))
    tiers = [s.tier for s in specs]
    assert tiers == sorted(tiers, key=lambda t: t != "full")
    for tier in ("full", "light"):
        sens = [s.sensitivity for s in specs if s.tier == tier]
        assert sens == sorted(sens, reverse=True)
