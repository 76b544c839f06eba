"""compile_quantized end to end on tiny Wan, CogVideoX and PixArt (random weights)."""
import math

import pytest
import torch
from torch import nn

from conftest import MODELS, tiny_wan, wan_inputs
from lsgq_compiler import Plan, QuantConfig, compile_quantized
from lsgq_compiler.calibration import WeakCalibrationWarning
from lsgq_compiler.vsr.metrics import sqnr


def _ref(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def test_minmax_w8a8_sqnr_at_least_30db(model_and_inputs):
    name, model, inputs = model_and_inputs
    calib = [MODELS[name][1](seed=s) for s in (2, 3)]
    qm = compile_quantized(model, inputs, QuantConfig(recipe="minmax", weight_bits=8, act_bits=8), calib_data=calib)
    with torch.no_grad():
        out = qm(**inputs)
    assert sqnr(_ref(model, inputs), out) >= 30.0
    assert qm.plan.summary()["quantized"] > 0


@pytest.mark.parametrize("bits", [4, 6])
def test_low_bits_run_and_degrade_gracefully(bits):
    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=bits, act_bits=bits), calib_data=[inp])
    with torch.no_grad():
        out = qm(**inp)
    s = sqnr(_ref(m, inp), out)
    assert torch.isfinite(out).all() and 10.0 < s < 55.0  # W6A6/W4A4: quantized (not identity), not broken
    assert set(qm.plan.summary()["formats"]) == {"FP", f"W{bits}A{bits}"}


def test_model_state_dict_bit_identical():
    m, inp = tiny_wan(), wan_inputs()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    ids = {k: id(p) for k, p in m.named_parameters()}
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=4, act_bits=4), calib_data=[inp])
    qm(**inp)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert ids == {k: id(p) for k, p in m.named_parameters()}
    assert all(isinstance(mod, nn.Linear) for k, mod in m.named_modules() if k.endswith("to_q"))


def test_no_training_state_left_after_compile():
    """After compile_quantized no layer keeps its training target (a weight copy), a gradient or the
    fake-quant weight cache (rebuilt on the next call): issue 21's memory at 14 B."""
    m, inp = tiny_wan(), wan_inputs()
    m = m.to(torch.bfloat16)
    inp = {k: (v.to(torch.bfloat16) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    qm = compile_quantized(m, inp, QuantConfig(recipe="lsgquant", weight_bits=4, act_bits=4,
                                               options={"sensitivity": "qerror", "light_iters": 3, "full_iters": 4}),
                           calib_data=[inp], progress=False)
    layers = qm.quant_linears().values()
    assert sum("qao" in q.spec.extra for q in layers) > 0  # QAO trained some layers
    for q in layers:
        assert getattr(q, "fp_weight", None) is None and q._wcache is None
        assert all(p.grad is None for p in q.parameters())
    with torch.no_grad():
        assert sqnr(_ref(m, inp).float(), qm(**inp).float()) > 10.0


def test_same_seed_same_plan():
    m, inp = tiny_wan(), wan_inputs()
    cfg = QuantConfig(weight_bits=6, act_bits=6, seed=3)
    a = compile_quantized(m, inp, cfg, calib_data=[inp]).plan
    b = compile_quantized(m, inp, cfg, calib_data=[inp]).plan
    assert a.to_json() == b.to_json()


def test_plan_reapplied_at_other_shape_matches_fresh_compile(tmp_path):
    m = tiny_wan()
    cfg = QuantConfig(weight_bits=4, act_bits=4)
    small, big = wan_inputs(frames=2, size=8), wan_inputs(frames=3, size=12, seed=5)
    path = compile_quantized(m, small, cfg, calib_data=[small]).plan.save(tmp_path / "plan.json")
    plan = Plan.load(path)
    # hand-edit: keep one layer in full precision
    plan.layers["blocks.0.ffn.net.2"].weight_bits = None
    plan.layers["blocks.0.ffn.net.2"].act_bits = None
    reapplied = compile_quantized(m, big, cfg, calib_data=[big], plan=plan)
    assert reapplied.plan["blocks.0.ffn.net.2"].fmt == "FP"
    fresh_plan = compile_quantized(m, big, cfg, calib_data=[big]).plan
    fresh_plan.layers["blocks.0.ffn.net.2"].weight_bits = None
    fresh_plan.layers["blocks.0.ffn.net.2"].act_bits = None
    fresh = compile_quantized(m, big, cfg, calib_data=[big], plan=fresh_plan)
    with torch.no_grad():
        torch.testing.assert_close(reapplied(**big), fresh(**big), rtol=0, atol=0)
    # and re-applying the unedited plan reproduces a fresh compile at the new shape
    unedited = compile_quantized(m, big, cfg, calib_data=[big], plan=Plan.load(path))
    plain = compile_quantized(m, big, cfg, calib_data=[big])
    with torch.no_grad():
        assert torch.equal(unedited(**big), plain(**big))


def test_missing_calib_data_warns():
    m, inp = tiny_wan(), wan_inputs()
    with pytest.warns(WeakCalibrationWarning, match="weak"):
        compile_quantized(m, inp, QuantConfig())


@pytest.mark.parametrize("case", ["nan", "inf", "shape", "empty", "kind"])
def test_bad_calibration_data(case):
    m, inp = tiny_wan(), wan_inputs()
    bad = dict(inp)
    if case == "nan":
        bad["hidden_states"] = inp["hidden_states"].clone()
        bad["hidden_states"][0, 0, 0, 0, 0] = math.nan
        calib, exc, msg = [bad], ValueError, "NaN or Inf"
    elif case == "inf":
        bad["encoder_hidden_states"] = inp["encoder_hidden_states"].clone()
        bad["encoder_hidden_states"][0, 0, 0] = math.inf
        calib, exc, msg = [bad], ValueError, "NaN or Inf"
    elif case == "shape":
        calib, exc, msg = [wan_inputs(frames=3)], ValueError, "captured at"
    elif case == "empty":
        calib, exc, msg = [], ValueError, "empty"
    else:
        calib, exc, msg = 42, TypeError, "iterable"
    with pytest.raises(exc, match=msg) as e:
        compile_quantized(m, inp, QuantConfig(), calib_data=calib)
    assert "->" in str(e.value)  # says what to do


def test_model_without_linears():
    conv = nn.Sequential(nn.Conv2d(3, 3, 3))
    with pytest.raises(ValueError, match="no nn.Linear"):
        compile_quantized(conv, (torch.randn(1, 3, 8, 8),), QuantConfig(), calib_data=[(torch.randn(1, 3, 8, 8),)])


def test_bad_config_kind():
    with pytest.raises(TypeError, match="QuantConfig"):
        compile_quantized(tiny_wan(), wan_inputs(), config={"recipe": "minmax"})


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 32), nn.Linear(32, 16)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_bad_example_inputs_and_meta_models_are_clear_errors():
    """Issue 15: NaN/Inf example inputs were accepted without calib_data; meta tensors crashed or 'succeeded'."""
    torch.manual_seed(0)
    m, x = _Tiny().eval(), torch.randn(4, 16)
    cfg = QuantConfig(weight_bits=8, act_bits=8)
    for bad in (math.nan, math.inf):
        y = x.clone()
        y[0, 0] = bad
        with pytest.raises(ValueError, match="example_inputs input .* contains NaN or Inf"):
            compile_quantized(m, (y,), cfg, progress=False)
    with pytest.raises(ValueError, match="example_inputs input .* meta device"):
        compile_quantized(m, (x.to("meta"),), cfg, progress=False)
    with pytest.raises(ValueError, match="calib_data\\[0\\] input .* meta device"):
        compile_quantized(m, (x,), cfg, calib_data=[(x.to("meta"),)], progress=False)
    with pytest.raises(ValueError, match="model's tensors are on the meta device"):
        compile_quantized(_Tiny().to("meta"), (x.to("meta"),), cfg, progress=False)


def test_calibration_in_another_dtype_is_cast_with_a_note():
    """Issue 15: fp16 calibration data for an fp32 model crashed smoothquant ('Half vs float')."""
    from lsgq_compiler.calibration import CalibrationCastWarning

    torch.manual_seed(0)
    m, x = _Tiny().eval(), torch.randn(4, 16)
    calib = [(torch.randn(4, 16).half(),) for _ in range(2)]
    with pytest.warns(CalibrationCastWarning, match="float16 -> torch.float32"):
        qm = compile_quantized(m, (x,), QuantConfig(recipe="smoothquant", weight_bits=8, act_bits=8),
                               calib_data=calib, progress=False)
    with torch.no_grad():
        assert sqnr(m(x), qm(x)) > 25.0


def test_call_at_another_shape_says_how_to_reapply():
    """Issue 15: a call at another shape raised torch's raw 'Guard failed' AssertionError."""
    torch.manual_seed(0)
    m, x = _Tiny().eval(), torch.randn(4, 16)
    qm = compile_quantized(m, (x,), QuantConfig(weight_bits=8, act_bits=8), calib_data=[(x,)], progress=False)
    with pytest.raises(ValueError, match="(?s)captured at input shapes .*\\(4, 16\\).*\\(7, 16\\).*plan=qm.plan"):
        qm(torch.randn(7, 16))


def test_tied_linear_weight_is_reported_as_skipped():
    """Issue 15: a linear sharing (tying) another's weight was silently left out of the plan."""
    from lsgq_compiler.api import TiedWeightWarning

    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.c(self.b(torch.relu(self.a(x))))

    torch.manual_seed(0)
    m, x = Tied().eval(), torch.randn(4, 16)
    with pytest.warns(TiedWeightWarning, match="weight tied to"):
        qm = compile_quantized(m, (x,), QuantConfig(weight_bits=8, act_bits=8), calib_data=[(x,)], progress=False)
    skipped = qm.info["notes"]["skipped_linears"]
    assert len(skipped) == 1 and set(skipped) | set(qm.plan.layers) == {"a", "b", "c"}
    rows = {r["layer"]: r for r in qm.report()}
    (path,) = skipped
    assert rows[path]["format"] == "FP" and "tied" in rows[path]["note"]
    with torch.no_grad():
        assert sqnr(m(x), qm(x)) > 30.0
