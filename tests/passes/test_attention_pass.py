import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized
from lsgq_compiler.vsr.metrics import sqnr


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


def test_attention_layers_are_kept_by_measured_sqnr():
    """Each eligible layer's 8-bit SQNR is measured on the calibration batches and recorded; a
    threshold above every layer keeps them all in full precision (and says why)."""
    m, inp = tiny_wan(), wan_inputs(frames=4, size=16)
    base = dict(weight_bits=8, act_bits=8, attention_bits=8)
    qm = compile_quantized(m, inp, QuantConfig(**base, options={"attention_min_kv": 32}), calib_data=[inp],
                           progress=False)
    on = {k: v for k, v in qm.plan.attention.items() if v["quantized"]}
    assert on and all(v["sqnr_db"] >= 30.0 for v in on.values())
    strict = compile_quantized(m, inp, QuantConfig(**base, options={"attention_min_kv": 32, "attention_min_sqnr_db": 200.0}),
                               calib_data=[inp], progress=False)
    att = strict.plan.attention
    assert not any(v["quantized"] for v in att.values())
    assert all("min_sqnr_db" in att[k]["reason"] for k in on)
    targets = [n.target for n in strict.gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.lsgq.int8_attention.default not in targets


def test_attention_measurement_leaves_the_model_as_without_it():
    """Measuring runs the graph on calibration data with probes in place of SDPA: afterwards the
    graph is restored and the quantized model's output is the same as with measurement off."""
    from lsgq_compiler.passes.attention import QuantizeAttention
    from lsgq_compiler.passes.infra import PassContext
    from lsgq_compiler.capture import capture

    m, inp = tiny_wan(), wan_inputs(frames=4, size=16)
    outs = []
    for measure in (True, False):
        cap = capture(m, inp, copy_model=True)
        ctx = PassContext(config=QuantConfig(), captured=cap, calib=[(cap.args, cap.kwargs)], progress=False)
        gm = QuantizeAttention(ctx, min_kv_tokens=32, measure=measure)(cap.gm).graph_module
        assert ("sqnr_db" in ctx.notes["attention"]["blocks.0.attn1"]) == measure
        with torch.no_grad():
            outs.append(gm(*cap.args, **cap.kwargs))
    assert torch.equal(outs[0], outs[1])


def test_given_plan_decisions_are_reused_without_measuring():
    m, inp = tiny_wan(), wan_inputs(frames=4, size=16)
    cfg = QuantConfig(weight_bits=8, act_bits=8, attention_bits=8, options={"attention_min_kv": 32})
    first = compile_quantized(m, inp, cfg, calib_data=[inp], progress=False)
    plan = first.plan
    plan.attention["blocks.1.attn1"]["quantized"] = False
    again = compile_quantized(m, inp, cfg, calib_data=[inp], plan=plan, progress=False)
    att = again.plan.attention
    assert att["blocks.0.attn1"]["quantized"] and not att["blocks.1.attn1"]["quantized"]
    assert "given plan" in att["blocks.1.attn1"]["reason"] and "sqnr_db" not in att["blocks.0.attn1"]
