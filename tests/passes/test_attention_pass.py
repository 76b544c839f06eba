import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.metrics import sqnr


def test_attention_pass_replaces_self_attention_only():
    m, inp = tiny_wan(), wan_inputs(frames=4, size=16)  # 256 video tokens, 5 text tokens
    cfg = QuantConfig(weight_bits=8, act_bits=8, attention_bits=8, options={"attention_min_kv": 32})
    qm = compile_quantized(m, inp, cfg, calib_data=[inp], progress=False)
    att = qm.plan.attention
    assert {k for k, v in att.items() if v["quantized"]} == {"blocks.0.attn1", "blocks.1.attn1"}
    assert not att["blocks.0.attn2"]["quantized"]  # 5 text keys: left alone
    targets = [n.target for n in qm.gm.graph.nodes if n.op == "call_function"]
    assert targets.count(torch.ops.lsgq.int8_attention.default) == 2
    with torch.no_grad():
        assert sqnr(m(**inp, return_dict=False)[0], qm(**inp)) >= 30.0
    assert any("int8" in r["format"] for r in qm.report())
