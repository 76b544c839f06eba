"""torch.compile(backend="lsgq"): fullgraph capture, plan reuse, entry-point resolution + inductor."""
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.vsr.metrics import sqnr


@pytest.fixture(scope="module")
def wan_qm():
    m, inp = tiny_wan(), wan_inputs()
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    with torch.no_grad():
        return m, inp, qm, qm(**inp)


def _compiled(m, inp, **options):
    import lsgq_compiler.backends.dynamo  # noqa: F401  (registers "lsgq" in this process)

    torch._dynamo.reset()
    f = torch.compile(m, backend="lsgq", fullgraph=True, options={"inductor": False, **options})
    with torch.no_grad():
        return f(**inp, return_dict=False)[0]


def test_reusing_the_plan_reproduces_the_fake_quant_model(wan_qm):
    m, inp, qm, y_qm = wan_qm
    y = _compiled(m, inp, plan=qm.plan, quant_state=qm.quant_state_dict(), kernels="fake")
    assert torch.equal(y, y_qm)


def test_quantized_model_option_lowers_to_torchao(wan_qm):
    m, inp, qm, y_qm = wan_qm
    y = _compiled(m, inp, quantized_model=qm)
    assert 40.0 <= sqnr(y_qm, y) < float("inf")  # torchao int8 kernels, not the fake-quant path


def test_without_a_plan_warns_about_weak_calibration(wan_qm):
    m, inp, qm, y_qm = wan_qm
    with pytest.warns(UserWarning, match="weak calibration"):
        y = _compiled(m, inp, weight_bits=8, act_bits=8, kernels="fake")
    assert torch.equal(y, y_qm)  # minmax W8A8 from the graph == compile_quantized's minmax W8A8


def test_unknown_option_is_an_error(wan_qm):
    m, inp, _, _ = wan_qm
    with pytest.raises(Exception, match="unknown lsgq backend options"):
        _compiled(m, inp, bitz=4)


SCRIPT = textwrap.dedent("""
    import sys, warnings
    import torch
    from torch._dynamo.backends.registry import _BACKENDS, _discover_entrypoint_backends
    _discover_entrypoint_backends()
    assert "lsgq_compiler.backends.dynamo" not in sys.modules
    assert _BACKENDS["lsgq"].value == "lsgq_compiler.backends.dynamo:lsgq_backend", _BACKENDS.get("lsgq")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).eval()
    x = torch.randn(4, 16, 64)
    f = torch.compile(model, backend="lsgq", fullgraph=True, options={"weight_bits": 8, "act_bits": 8})
    with warnings.catch_warnings(record=True) as w, torch.no_grad():
        warnings.simplefilter("always")
        y = f(x)
    assert any("weak calibration" in str(x.message) for x in w)
    ref = model(x)
    err = ((y - ref).pow(2).sum() / ref.pow(2).sum()).item()
    assert 0 < err < 1e-3, err
    print("OK", err)
""")


def test_entry_point_fullgraph_inductor_in_a_fresh_process(tmp_path):
    env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(tmp_path / "inductor"))
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=400, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0 and "OK" in r.stdout, r.stderr[-3000:]
