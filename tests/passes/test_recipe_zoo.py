"""Every seed and peer recipe compiles the tiny Wan at W8A8/W6A6/W4A4 with finite outputs,
and at W8A8 stays within 30 dB SQNR of full precision."""
import math

import pytest
import torch
from zoo_support import capture_once  # noqa: F401  (autouse fixture)

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.vsr.metrics import sqnr
from lsgq_compiler.recipes import RECIPES

ZOO = ("smoothquant", "quarot", "svdquant", "viditq", "quantvsr", "qdit4sr", "passionsr", "qartsr", "qvd")
# training budgets cut down so that the whole matrix runs in seconds
FAST = {"quantvsr": {"lowrank_iters": 4, "lba_iters": 4}, "passionsr": {"let_iters": 4, "bound_iters": 4},
        "qartsr": {"module_iters": 3, "image_iters": 1, "e2e_iters": 1}}
W8A8_MIN_SQNR_DB = 30.0


@pytest.fixture(scope="module")
def setting():
    m, inp = tiny_wan(), wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in (2, 3)]
    test = wan_inputs(frames=2, size=8, seed=7)
    with torch.no_grad():
        ref = m(**test, return_dict=False)[0]
    return m, inp, calib, test, ref


def test_zoo_is_registered_with_docs():
    for name in ZOO:
        r = RECIPES[name]
        assert r.summary and r.paper and len(r.doc) > 200, name


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("recipe", ZOO)
def test_recipe_runs_at_each_width(setting, recipe, bits):
    m, inp, calib, test, ref = setting
    cfg = QuantConfig(recipe=recipe, weight_bits=bits, act_bits=bits, options=FAST.get(recipe, {}))
    qm = compile_quantized(m, inp, cfg, calib_data=calib, progress=False)
    with torch.no_grad():
        out = qm(**test)
    assert torch.isfinite(out).all()
    q = qm.plan.quantized_layers()
    assert q and all(s.weight_bits is not None and s.act_bits is not None for s in q)
    db = sqnr(ref, out)
    assert not math.isnan(db)
    if bits == 8:
        assert db >= W8A8_MIN_SQNR_DB, f"{recipe} W8A8: {db:.1f} dB"


def test_time_budget_stops_training(setting):
    m, inp, calib, _, _ = setting
    cfg = QuantConfig(recipe="quantvsr", weight_bits=4, act_bits=4, time_budget_s=1e-3,
                      options={"lowrank_iters": 50, "lba_iters": 50})
    qm = compile_quantized(m, inp, cfg, calib_data=calib, progress=False)
    notes = qm.info["notes"]
    assert notes["train:lowrank"]["skipped_time_budget"] >= len(qm.plan.quantized_layers()) - 1
