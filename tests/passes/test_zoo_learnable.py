"""Training stages of the zoo: LBA trains only the bias alignment, LBQ bounds move, LET is an
equivalent transformation, RPQ runs in reversed module order and touches no weight."""
import pytest
import torch
import torch.nn.functional as F
from zoo_support import capture_once  # noqa: F401  (autouse fixture)

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.passes.infra import PassContext
from lsgq_compiler.passes.lba import BiasAlignedLinear
from lsgq_compiler.passes.lbq import LET, LearnableActQuant, LearnableWeightQuant
from lsgq_compiler.passes.rpq import module_of
from lsgq_compiler.passes.train_params import TrainParams
from lsgq_compiler.qlinear import quantizers_off


@pytest.fixture(scope="module")
def wan():
    m = tiny_wan()
    inp = wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in (2, 3)]
    return m, inp, calib


def _compile(wan, recipe, **options):
    m, inp, calib = wan
    return compile_quantized(m, inp, QuantConfig(recipe=recipe, weight_bits=4, act_bits=4, options=options),
                             calib_data=calib, progress=False)


def _snapshot(qm):
    return {f"{p}/{n}": t.detach().clone() for p, m in qm.quant_linears().items() for n, t in m.named_parameters()}


def _run_stage(qm, wan, stage):
    ctx = PassContext(config=qm.config, captured=None, calib=[((), b) for b in wan[2]], progress=False)
    stage.ctx = ctx
    stage(qm.gm)
    return ctx


def test_lba_stage_trains_only_the_bias_alignment(wan):
    qm = _compile(wan, "quantvsr", lowrank_iters=0, lba_iters=0)
    mods = [m for m in qm.quant_linears().values() if m.spec.quantized]
    assert mods and all(isinstance(m, BiasAlignedLinear) and not m.lba.any() for m in mods)
    before = _snapshot(qm)
    _run_stage(qm, wan, TrainParams(None, "lba", iters=5))
    after = _snapshot(qm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.endswith("/lba") for k in changed)
    assert len(changed) == len(mods)
    with quantizers_off(qm.gm), torch.no_grad():  # the alignment is off in full precision
        m, inp, _ = wan
        ref = m(**inp, return_dict=False)[0]
        assert float((qm(**inp) - ref).norm() / ref.norm()) < 1e-5


def test_later_stages_aim_at_the_original_layer(wan):
    """After the low-rank refinement, W_R + L_up L_down no longer equals W; LBA must still be
    distilled to the original layer, so it starts where the refinement ended."""
    qm = _compile(wan, "quantvsr", lowrank_iters=8, lba_iters=2)
    for s in qm.plan.quantized_layers():
        assert s.extra["train:lba"]["loss_before"] == pytest.approx(s.extra["train:lowrank"]["loss_after"], rel=0.02)
        assert s.extra["train:lowrank"]["loss_after"] < s.extra["train:lowrank"]["loss_before"]


def test_lbq_bounds_change_during_training_and_weights_do_not(wan):
    qm = _compile(wan, "passionsr", let_iters=0, bound_iters=0)
    mods = [m for m in qm.quant_linears().values() if m.spec.quantized]
    assert all(isinstance(m.wq, LearnableWeightQuant) and isinstance(m.aq, LearnableActQuant) for m in mods)
    before = _snapshot(qm)
    _run_stage(qm, wan, TrainParams(None, "bounds", iters=5, lr=1e-2))
    after = _snapshot(qm)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit("/", 1)[1] in ("wq.lo", "wq.hi", "aq.lo", "aq.hi") for k in changed)
    assert any(k.endswith("aq.hi") for k in changed) and any(k.endswith("wq.lo") for k in changed)
    assert not any("weight" in k or "let" in k for k in changed)


def test_let_is_an_equivalent_transformation():
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(6, 24, generator=g), torch.randn(10, 24, generator=g)
    let = LET(24)
    with torch.no_grad():
        let.let_scale.copy_(torch.rand(24, generator=g) * 3 + 0.2)
        let.let_shift.copy_(torch.randn(24, generator=g))
        xt = (x - let.let_shift) / let.scale()
        aq = LearnableActQuant(16, "static", float(xt.min()), float(xt.max()), let)
        wq = LearnableWeightQuant(w * let.scale(), 16, let)
        y = F.linear(aq(x), wq(w))
    assert float((y - x @ w.T).norm() / (x @ w.T).norm()) < 1e-3  # at 16 bits only rounding remains


def test_rpq_calibrates_modules_in_reversed_order_and_keeps_weights(wan):
    m, _, _ = wan
    qm = _compile(wan, "qartsr", module_iters=3, image_iters=1, e2e_iters=1)
    order = qm.info["notes"]["rpq_order"]
    blocks = [f"blocks.{i}" for i in range(len(m.blocks))]
    assert order == blocks[::-1]
    for path, mod in qm.quant_linears().items():
        if mod.spec.quantized:
            assert mod.spec.extra["rpq_step"] == order.index(module_of(path))
            torch.testing.assert_close(mod.weight, m.get_submodule(path).weight, rtol=0, atol=0)
    assert qm.info["notes"]["train:extended_e2e"]["iters"] == 1
    assert module_of("transformer_blocks.12.attn1.to_q") == "transformer_blocks.12"
    assert module_of("proj_out") == "proj_out"


def test_unknown_parameter_group_is_rejected():
    with pytest.raises(ValueError, match="unknown parameter groups"):
        TrainParams(None, "scales", iters=1)
