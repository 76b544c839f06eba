"""torchao lowering: real int8 kernels for W8A8, the DRAQ deployable form, honest reports."""
import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.backends.common import LoweredLinear
from lsgq_compiler.backends.draq_int8 import DRAQInt8Linear
from lsgq_compiler.backends.torchao import lower_torchao
from lsgq_compiler.vsr.metrics import sqnr
from lsgq_compiler.plan import LayerSpec
from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.quantizers import ActQuant, WeightQuant


@pytest.fixture(scope="module")
def wan():
    m, inp = tiny_wan(), wan_inputs()
    with torch.no_grad():
        ref = m(**inp, return_dict=False)[0]
    return m, inp, ref


def _count_int_mm(monkeypatch):
    calls = []
    real = torch._int_mm
    monkeypatch.setattr(torch, "_int_mm", lambda a, b: calls.append(a.shape) or real(a, b))
    return calls


def test_w8a8_lowering_runs_int8_gemm_and_matches_fake_quant(wan, monkeypatch):
    m, inp, ref = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    with torch.no_grad():
        y_fq = qm(**inp)
    low = lower_torchao(qm)
    calls = _count_int_mm(monkeypatch)
    with torch.no_grad():
        y = low(**inp)
    assert sqnr(y_fq, y) >= 40.0 and sqnr(ref, y) >= 40.0
    rows = [r for r in low.report() if r["format"] == "W8A8"]
    assert rows and all(r["real_kernel"] and r["backend"] == "torchao" for r in rows)
    assert len(calls) >= len(rows)  # every W8A8 layer ran an int8 x int8 -> int32 GEMM
    # qm itself is untouched: still fake-quant, same output
    assert not any(isinstance(x, LoweredLinear) for x in qm.modules())
    assert all(r["kernel"] == "simulated" for r in qm.report() if r["format"] == "W8A8")
    with torch.no_grad():
        assert torch.equal(qm(**inp), y_fq)


def test_sub_8_bit_activations_stay_simulated_and_say_so(wan):
    m, inp, _ = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=4, act_bits=4), calib_data=[inp], progress=False)
    low = lower_torchao(qm)
    rows = [r for r in low.report() if r["format"] == "W4A4"]
    assert rows and not any(r["real_kernel"] for r in rows)
    assert all("simulat" in r["kernel"] and "W4A4" in r["note"] for r in rows)
    with torch.no_grad():
        assert torch.equal(low(**inp), qm(**inp))


def _draq_layer(k, n, mode, wbits=8, symmetric=False, seed=0):
    torch.manual_seed(seed)
    lin = torch.nn.Linear(k, n)
    ql = QuantLinear.from_linear(lin, LayerSpec("x", k, n, weight_bits=wbits, act_bits=8, act_quantizer=mode,
                                                weight_symmetric=symmetric))
    ql.wq, ql.aq = WeightQuant(wbits, "row", symmetric), ActQuant(8, mode)
    return ql


@pytest.mark.parametrize("mode", ["draq", "draq_static"])
@pytest.mark.parametrize("wbits", [8, 4])
def test_draq_deployable_form_matches_fake_quant_draq(mode, wbits, monkeypatch):
    k, n = 128, 96
    ql = _draq_layer(k, n, mode, wbits)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 200, k, generator=g) * torch.logspace(-1, 1, k)  # channel ranges over 2 decades
    if mode == "draq_static":
        ql.aq.channel_scale = x.abs().amax((0, 1)) * 1.05
    core = DRAQInt8Linear(ql)
    calls = _count_int_mm(monkeypatch)
    with torch.no_grad():
        y_fq, y = ql(x), core(x)
    assert len(calls) == 2  # one int8 GEMM per batch element
    assert sqnr(y_fq, y) >= 35.0  # the only extra error: W diag(s) requantized to int8 per row


def test_draq_deployable_form_is_exact_when_requantization_is_lossless():
    """Symmetric int8 weights and equal channel ranges: W diag(s) requantizes to the same codes,
    so the integer GEMM reproduces the fake-quant DRAQ layer to float rounding."""
    k, n = 64, 48
    ql = _draq_layer(k, n, "draq", 8, symmetric=True)
    x = torch.randn(1, 50, k)
    x[0, 0] = 3.0  # one token sets every channel's range to 3: s_c constant
    x = x.clamp(-3.0, 3.0)
    with torch.no_grad():
        torch.testing.assert_close(DRAQInt8Linear(ql)(x), ql(x), rtol=1e-5, atol=1e-5)


def test_lsgquant_draq_model_lowers_with_rotation_and_lowrank(wan):
    m, inp, ref = wan
    cfg = QuantConfig(recipe="lsgquant", weight_bits=8, act_bits=8,
                      options={"uniform_bits": True, "light_iters": 1, "full_iters": 2})
    qm = compile_quantized(m, inp, cfg, calib_data=[inp], progress=False)
    low = lower_torchao(qm)
    draq_layers = [x for x in low.modules() if isinstance(x, LoweredLinear) and isinstance(x.core, DRAQInt8Linear)]
    assert draq_layers and any(x.rot_block for x in draq_layers) and any(x.lr_down is not None for x in draq_layers)
    with torch.no_grad():
        y_fq, y = qm(**inp), low(**inp)
    assert sqnr(y_fq, y) >= 30.0


def test_fp8_needs_a_recent_gpu(wan):
    m, inp, _ = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    with pytest.raises(ValueError, match="compute capability"):
        lower_torchao(qm, fp8=True)


def test_recipe_extras_are_never_dropped_by_lowering():
    """Layers with a recipe's extra structure (here QuantVSR's learnable bias alignment) stay
    as their exact fake-quant layer, reported as simulated, instead of losing the extras."""
    import torch

    from conftest import tiny_wan, wan_inputs
    from lsgq_compiler import QuantConfig, compile_quantized
    from lsgq_compiler.backends.torchao import lower_torchao
    from lsgq_compiler.vsr.metrics import sqnr

    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(recipe="quantvsr", weight_bits=8, act_bits=8), calib_data=[inp],
                           progress=False)
    lowered = lower_torchao(qm)
    with torch.no_grad():
        a, b = qm(**inp), lowered(**inp)
    assert sqnr(a, b) >= 30.0
    kept = [r for r in lowered.report() if "not lowered" in str(r.get("note", ""))]
    assert kept and all(r["real_kernel"] is False for r in kept)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA lowering needs a GPU")
@pytest.mark.parametrize("recipe,fp8", [("minmax", False), ("minmax", True), ("lsgquant", False)])
def test_cuda_lowering_runs_real_kernels(recipe, fp8):
    if fp8 and torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("FP8 needs sm_89+")
    m = tiny_wan().cuda()
    inp = {k: v.cuda() if torch.is_tensor(v) else v for k, v in wan_inputs().items()}
    qm = compile_quantized(m, inp, QuantConfig(recipe=recipe, weight_bits=8, act_bits=8, time_budget_s=5),
                           calib_data=[inp], progress=False)
    low = lower_torchao(qm, device="cuda", fp8=fp8)
    with torch.no_grad():
        ref, y_fq, y = m(**inp, return_dict=False)[0], qm(**inp), low(**inp)
    rows = [r for r in low.report() if r["format"] == "W8A8"]
    assert rows and all(r["real_kernel"] for r in rows), rows[:2]
    # FP8 e4m3 has 3 mantissa bits: looser than int8 against the int8 fake-quant model
    assert sqnr(y_fq, y) >= (25.0 if fp8 else 35.0) and sqnr(ref, y) >= (25.0 if fp8 else 35.0)
