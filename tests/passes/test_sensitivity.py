"""Sensitivity scores: the gradient-probe estimators against closed forms, and the default
score against the one-layer-at-a-time ground truth."""
import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.passes.infra import PassContext
from lsgq_compiler.passes.observe import Observe
from lsgq_compiler.passes.sensitivity import Sensitivity, one_at_a_time, spearman
from lsgq_compiler.qlinear import InputStats, quantizers_off


def test_probe_estimates_match_closed_form():
    # out = Y A with Y a layer output and dY its error: ||J dY||^2 = ||dY A||^2 and the
    # diagonal (fisher) term is sum_j dY_j^2 (A A^T)_jj, per token row
    g = torch.Generator().manual_seed(0)
    y0, dy = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    a = torch.randn(5, 3, generator=g)
    st = InputStats(5)
    st.track_grads = True
    probes = 4000
    with torch.enable_grad():
        y = st.watch_output(y0.clone(), dy)
        out = y @ a
        for k in range(probes):
            v = torch.randn(out.shape, generator=g)
            (out * v).sum().backward(retain_graph=k < probes - 1)
    assert st.probe_count == probes
    exact = float((dy @ a).pow(2).sum())
    diag = float((dy.pow(2) * (a @ a.T).diagonal()).sum())
    # Monte Carlo: relative standard error ~ sqrt(2 / probes) = 2.2%; allow 4 sigma
    assert st.probe_sums["output_error"] / probes == pytest.approx(exact, rel=0.09)
    assert st.probe_sums["fisher"] / probes == pytest.approx(diag, rel=0.09)


def test_default_score_tracks_ground_truth():
    m = tiny_wan()
    calib = [wan_inputs(seed=s) for s in range(3)]
    opts = {"volts": "all_frozen", "lowrank_share": 0, "rotate": False, "uniform_bits": True, "observe_grads": True}
    qm = compile_quantized(m, calib[0], QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4, options=opts),
                           calib_data=calib, progress=False)
    assert qm.info["notes"]["sensitivity_score"] == "output_error"
    batches = [((), b) for b in calib]
    with quantizers_off(qm.gm), torch.no_grad():
        fp = [qm(**b) for _, b in batches]
    gt = one_at_a_time(qm.gm, batches, fp, progress=False)
    layers = qm.plan.quantized_layers()
    rho = {k: spearman([s.extra["scores"][k] for s in layers], [gt[s.module_path] for s in layers])
           for k in layers[0].extra["scores"]}
    assert rho["output_error"] >= 0.7, rho  # the bar for the default score


def test_gradient_score_without_gradients_is_a_clear_error():
    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(recipe="minmax", weight_bits=4, act_bits=4), calib_data=[inp],
                           progress=False)
    ctx = PassContext(config=qm.config, captured=None, calib=[((), inp)], progress=False)
    Observe(ctx, grads=False)(qm.gm)
    with pytest.raises(RuntimeError, match="needs output gradients"):
        Sensitivity(ctx, "output_error")(qm.gm)
