"""Reproducible results (#14): the same compile twice gives the same tensors and plan bytes;
budgets are iterations, and the wall-clock safety cap says so in the plan when it fires."""
import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.report import plan_training, sensitivity_label, time_cap_events


def _compile(**cfg):
    m, inp = tiny_wan(), wan_inputs(frames=2, size=8)
    calib = [wan_inputs(frames=2, size=8, seed=s) for s in range(2)]
    config = QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                         options={"full_iters": 12, "light_iters": 4, "probes": 1, "qao_iters": 30}, **cfg)
    return compile_quantized(m, inp, config, calib_data=calib, progress=False)


@pytest.fixture(scope="module")
def twice():
    return _compile(), _compile()


def test_same_command_same_tensors_and_plan_bytes(twice):
    a, b = twice
    sa, sb = a.quant_state_dict(), b.quant_state_dict()
    assert sa.keys() == sb.keys() and sa
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert a.plan.to_json().encode() == b.plan.to_json().encode()


def test_qao_total_iteration_budget_most_sensitive_first(twice):
    plan = twice[0].plan
    trained = [s for s in plan.quantized_layers() if "iters" in s.extra.get("qao", {})]
    assert sum(s.extra["qao"]["iters"] for s in trained) <= 30
    skipped = [s for s in plan.quantized_layers() if s.extra.get("qao", {}).get("skipped") == "iteration budget"]
    assert skipped and trained  # 30 iterations do not reach every layer
    assert max(s.extra["qao"]["order"] for s in trained) < min(s.extra["qao"]["order"] for s in skipped)
    assert "QAO total 30 iters" in plan_training(plan) and not time_cap_events(plan)
    assert sensitivity_label(plan) == "output_error"  # the recipe default, read from the plan


def test_time_cap_fires_and_is_recorded():
    qm = _compile(time_budget_s=1e-6)
    events = time_cap_events(qm.plan)
    assert len(events) == 1 and events[0].startswith("time cap (1e-06 s) fired in qao")
    note = qm.info["notes"]["time_cap"]
    assert note["stages"][0]["stage"] == "qao" and note["time_budget_s"] == 1e-6


def test_compare_table_names_the_budgets_and_a_fired_cap():
    from lsgq_compiler.report import table1_markdown

    m = {"psnr": 25.0, "ssim": 0.7, "psnr_vs_fp": 40.0, "warp_error": 0.01, "quant_time_s": 1.0}
    cap = {"time_budget_s": 5.0, "stages": [{"stage": "qao", "layer": "blocks.0.ffn", "iters": 7, "skipped": 3}]}
    res = {"results": {"fp": m, "bicubic": m, "lsgquant-w4a4": m, "minmax-w4a4": m},
           "variants": {"lsgquant-w4a4": {"config": {"options": {"train_iters": 30}}, "notes": {"time_cap": cap}},
                        "minmax-w4a4": {"config": {"options": {}}, "notes": {}}}}
    md = table1_markdown(res)
    assert "- lsgquant-w4a4: iterations: --iters 30; time cap 5 s fired in qao at blocks.0.ffn after 7 iters, " \
           "3 layers skipped" in md
    assert "- minmax-w4a4: iterations: the recipe's own" in md


def test_iters_option_caps_every_training_stage():
    """`lsgq compare --iters N` (options.train_iters): the same per-layer cap for every method's stages."""
    m, inp = tiny_wan(), wan_inputs(frames=2, size=8)
    qm = compile_quantized(m, inp, QuantConfig(recipe="quantvsr", weight_bits=4, act_bits=4,
                                               options={"train_iters": 2, "train_tokens": 64}),
                           calib_data=[inp], progress=False)
    notes = qm.info["notes"]
    assert notes["train:lowrank"]["iters"] == 2 and notes["train:lba"]["iters"] == 2
    assert all(s.extra["train:lowrank"]["iters"] <= 2 for s in qm.plan.quantized_layers())
