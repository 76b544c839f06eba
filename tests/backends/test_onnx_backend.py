"""ONNX export: checker, onnxruntime run, parity, and integer kernels in the ORT-optimised graph."""
import argparse
import copy

import onnx
import pytest
import torch

from conftest import tiny_wan, wan_inputs
from lsgq_compiler import QuantConfig, compile_quantized, export_onnx
from lsgq_compiler.backends.onnx import (INTEGER_OPS, add_export_onnx_parser, export_lowered, lower_onnx, op_counts,
                                         ort_feed, ort_session)
from lsgq_compiler.vsr.metrics import sqnr

MIXED = {"blocks.0.attn1.to_q": (4, None), "blocks.0.attn1.to_k": (4, None), "blocks.0.attn1.to_v": (4, 8),
         "blocks.1.ffn.net.0.proj": (4, 4), "blocks.1.ffn.net.2": (6, 6)}


@pytest.fixture(scope="module")
def wan():
    return tiny_wan(), wan_inputs()


@pytest.fixture(scope="module")
def mixed(wan, tmp_path_factory):
    """One export covering W8A8 (per-tensor dynamic), W4A16, W4A8, W4A4, W6A6 and FP layers."""
    m, inp = wan
    cfg = QuantConfig(weight_bits=8, act_bits=8)
    plan = copy.deepcopy(compile_quantized(m, inp, cfg, calib_data=[inp], progress=False).plan)
    for path, (w, a) in MIXED.items():
        plan.layers[path].weight_bits, plan.layers[path].act_bits = w, a
    qm = compile_quantized(m, inp, cfg, calib_data=[inp], plan=plan, progress=False)
    d = tmp_path_factory.mktemp("onnx")
    lowered = lower_onnx(qm, act="tensor")
    path = export_lowered(lowered, d / "mixed.onnx", inp)
    return qm, lowered, path, d


def _run(path, inp, **kw):
    sess = ort_session(path, **kw)
    return torch.from_numpy(sess.run(None, ort_feed(sess, inp))[0])


def test_mixed_export_checks_runs_and_matches_torch(wan, mixed):
    m, inp = wan
    qm, lowered, path, d = mixed
    onnx.checker.check_model(str(path), full_check=True)
    with torch.no_grad():
        y_low, y_qm = lowered(**inp), qm(**inp)
    y_fp32_kernels = _run(path, inp, accuracy_level=1)  # MatMulNBits computing in fp32
    assert sqnr(y_low, y_fp32_kernels) >= 60.0  # same semantics as the lowered torch model
    y = _run(path, inp)  # ORT defaults (MatMulNBits: int8 activations inside)
    assert sqnr(y_low, y) >= 35.0 and sqnr(y_qm, y) >= 30.0


def test_mixed_export_runs_integer_kernels(wan, mixed):
    _, inp = wan
    qm, lowered, path, d = mixed
    opt = d / "mixed.opt.onnx"
    ort_session(path, optimized_path=opt)
    ops = op_counts(opt)
    n_w8a8 = sum(1 for s in qm.plan.layers.values() if s.fmt == "W8A8")
    n_dq = sum(1 for s in qm.plan.layers.values() if s.weight_bits and s.fmt != "W8A8")
    dyn = ops.get("DynamicQuantizeMatMul", 0) + ops.get("MatMulIntegerToFloat", 0) + ops.get("MatMulInteger", 0)
    assert dyn == n_w8a8
    assert ops.get("MatMulNBits", 0) == n_dq
    assert set(ops) & set(INTEGER_OPS)
    rows = {r["layer"]: r for r in lowered.report()}
    assert rows["blocks.0.attn1.to_q"]["real_kernel"] and "MatMulNBits" in rows["blocks.0.attn1.to_q"]["kernel"]
    assert not rows["blocks.1.ffn.net.0.proj"]["real_kernel"]  # W4A4: simulated, and said so
    assert rows["blocks.1.attn1.to_q"]["real_kernel"] and "per tensor" in rows["blocks.1.attn1.to_q"]["note"]


def test_w4_weights_are_packed_in_the_file(mixed):
    _, _, path, _ = mixed
    model = onnx.load(str(path))
    types = {t.name: t.data_type for t in model.graph.initializer}
    assert sum(1 for t in types.values() if t == onnx.TensorProto.UINT4) >= 2 * 4  # codes + zero points
    assert not any(n.op_type == "Cast" and any(a.i == onnx.TensorProto.UINT4 for a in n.attribute)
                   for n in model.graph.node)


def test_8bit_weights_are_uint8_for_exact_integer_gemms(mixed):
    """Every 8-bit weight feeding an integer GEMM (``MatMulInteger``) or a QDQ ``DequantizeLinear`` is stored
    as uint8 with zero point 128, never int8: onnxruntime's uint8 x int8 x86 kernels saturate in int16 on
    CPUs without VNNI (AVX2 and older), uint8 x uint8 is exact on all of them. Checked on the file and on
    onnxruntime itself: uint8 x uint8 ``MatMulInteger`` over the full code range equals int64 arithmetic."""
    import numpy as np
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    _, _, path, _ = mixed
    model = onnx.load(str(path))
    inits = {t.name: t for t in model.graph.initializer}
    fed = [i for n in model.graph.node if n.op_type == "MatMulInteger" for i in n.input[1:2]]
    assert fed and all(inits[i].data_type == TensorProto.UINT8 for i in fed if i in inits)
    assert not any(t.data_type == TensorProto.INT8 for t in model.graph.initializer)
    rng = np.random.default_rng(0)
    a, w = rng.integers(0, 256, (64, 256)).astype(np.uint8), rng.integers(0, 256, (256, 48)).astype(np.uint8)
    g = helper.make_graph([helper.make_node("MatMulInteger", ["A", "W", "za", "zw"], ["Y"])], "g",
                          [helper.make_tensor_value_info("A", TensorProto.UINT8, [64, 256])],
                          [helper.make_tensor_value_info("Y", TensorProto.INT32, [64, 48])],
                          [nh.from_array(w, "W"), nh.from_array(np.array(128, np.uint8), "za"),
                           nh.from_array(np.array(128, np.uint8), "zw")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21)])
    m.ir_version = 10
    import onnxruntime as ort

    y = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"A": a})[0]
    assert np.array_equal(y, (a.astype(np.int64) - 128) @ (w.astype(np.int64) - 128))


def test_per_token_export_reproduces_the_torch_quantized_model(wan, tmp_path):
    m, inp = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    path = export_onnx(qm, tmp_path / "token.onnx", inp, act="token")
    opt = tmp_path / "token.opt.onnx"
    y = _run(path, inp, optimized_path=opt)
    n_w8a8 = sum(1 for s in qm.plan.layers.values() if s.fmt == "W8A8")
    assert op_counts(opt).get("MatMulInteger", 0) == n_w8a8
    with torch.no_grad():
        assert sqnr(qm(**inp), y) >= 60.0  # the plan's quantizers, computed on integers


def test_static_qdq_fuses_to_qgemm(wan, tmp_path):
    m, inp = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    calib = [inp, wan_inputs(seed=7)]
    path = export_onnx(qm, tmp_path / "static.onnx", inp, act="static", calib_data=calib)
    opt = tmp_path / "static.opt.onnx"
    y = _run(path, inp, optimized_path=opt)
    n_w8a8 = sum(1 for s in qm.plan.layers.values() if s.fmt == "W8A8")
    assert op_counts(opt).get("QGemm", 0) == n_w8a8
    with torch.no_grad():
        y_low = lower_onnx(qm, act="static", calib_data=calib)(**inp)
        y_qm = qm(**inp)
    assert sqnr(y_low, y) >= 60.0 and sqnr(y_qm, y) >= 35.0


def test_cli_parser_and_bad_options(wan):
    parser = argparse.ArgumentParser(prog="lsgq")
    add_export_onnx_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["export-onnx", "--bits", "4/8", "--act", "static", "--out", "x.onnx"])
    assert (args.bits, args.act, args.out, callable(args.fn)) == ("4/8", "static", "x.onnx", True)
    m, inp = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8), calib_data=[inp], progress=False)
    with pytest.raises(ValueError, match="act="):
        lower_onnx(qm, act="per-token")
    with pytest.raises(ValueError, match="opset"):
        export_onnx(qm, "never.onnx", inp, opset=20)


def test_export_graph_has_no_scatter_and_fused_attention(wan, tmp_path):
    """The export rewrites (interleaved RoPE -> stack, SDPA -> MultiHeadAttention, RMSNorm in
    ORT's fusable form) keep the FP32 model exact and leave ORT no ScatterND/Transpose storm."""
    from lsgq_compiler.backends.onnx import export_float_onnx

    m, inp = wan
    path = export_float_onnx(m, tmp_path / "fp.onnx", inp)
    ops = op_counts(path)
    assert "ScatterND" not in ops and ops.get("MultiHeadAttention", 0) > 0
    opt = tmp_path / "fp.opt.onnx"
    y = _run(path, inp, optimized_path=opt)
    with torch.no_grad():
        ref = m(**inp, return_dict=False)[0]
    assert sqnr(ref, y) >= 80.0  # float32 rounding only
    assert op_counts(opt).get("SimplifiedLayerNormalization", 0) > 0


def test_int8_attention_op_matches_ort_and_uses_integer_matmul(tmp_path):
    from pathlib import Path

    from lsgq_compiler.backends.onnx.export import _export
    from lsgq_compiler.backends.onnx.ops import _translations

    class Attn(torch.nn.Module):
        def forward(self, q, k, v):
            return torch.ops.lsgq_onnx.int8_tensor_attention(q, k, v, 0.125, True)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 3, 200, 64, generator=g) for _ in range(3))
    k = k + torch.linspace(-3, 3, 64)  # channel bias: smoothing matters
    gm = torch.export.export(Attn(), (q, k, v)).module()
    path = _export(gm, Path(tmp_path / "attn.onnx"), (q, k, v), 21, _translations())
    opt = tmp_path / "attn.opt.onnx"
    sess = ort_session(path, optimized_path=opt)
    y = torch.from_numpy(sess.run(None, {i.name: t.numpy() for i, t in zip(sess.get_inputs(), (q, k, v))})[0])
    assert sqnr(Attn()(q, k, v), y) >= 60.0  # ORT computes what the torch op says
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    assert sqnr(ref, y) >= 30.0  # and that is 8-bit attention, not garbage
    assert any(op_counts(opt).get(o, 0) for o in ("DynamicQuantizeMatMul", "MatMulIntegerToFloat", "MatMulInteger"))


def test_quantized_attention_exports_and_reports(wan, tmp_path):
    m, inp = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8, attention_bits=8,
                                               options={"attention_min_kv": 1}), calib_data=[inp], progress=False)
    assert any(a["quantized"] for a in qm.plan.attention.values())
    lowered = lower_onnx(qm, act="tensor")
    rows = [r for r in lowered.report() if r["layer"] in qm.plan.attention and qm.plan.attention[r["layer"]]["quantized"]]
    assert rows and all(r["backend"] == "onnxruntime" and r["real_kernel"] for r in rows)
    assert all(a.get("backend") is None for a in qm.plan.attention.values())  # qm itself untouched
    path = export_onnx(qm, tmp_path / "attn.onnx", inp)
    with torch.no_grad():
        assert sqnr(lowered(**inp), _run(path, inp)) >= 40.0


def test_standard_ops_export_has_no_contrib_ops(wan, tmp_path):
    from lsgq_compiler.backends.onnx import export_float_onnx

    m, inp = wan
    path = export_float_onnx(m, tmp_path / "std.onnx", inp, contrib_ops=False)
    proto = onnx.load(str(path))
    assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
    onnx.checker.check_model(proto, full_check=True)
    with torch.no_grad():
        assert sqnr(m(**inp, return_dict=False)[0], _run(path, inp)) >= 80.0


def test_lsgq_attention_custom_op_runs_in_onnxruntime(wan, tmp_path):
    """attention_kernel='lsgq': the plan's 8-bit attention layers become lsgq's fused custom op
    com.lsgq::Int8Attention; ort_session registers its library and ORT runs it; the output is
    the torch lowered model's (same C++ kernel) and the report names the kernel."""
    from lsgq_compiler.backends.onnx import LSGQ_ATTENTION_KERNEL, uses_lsgq_ops

    m, inp = wan
    qm = compile_quantized(m, inp, QuantConfig(weight_bits=8, act_bits=8, attention_bits=8,
                                               options={"attention_min_kv": 1}), calib_data=[inp], progress=False)
    n_quantized = sum(a["quantized"] for a in qm.plan.attention.values())
    assert n_quantized
    path = export_onnx(qm, tmp_path / "lsgq_attn.onnx", inp, attention_kernel="lsgq")
    assert uses_lsgq_ops(path) and op_counts(path).get("Int8Attention") == n_quantized
    opt = tmp_path / "lsgq_attn.opt.onnx"
    import warnings

    from lsgq_compiler.backends.onnx.runtime import PortableAttentionWarning
    from lsgq_compiler.kernels import cpu_attention

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        y = _run(path, inp, optimized_path=opt, threads=2)
    # a CPU without AVX-512 VNNI runs the op's slow portable path: the session says so, and what to do
    portable = [w for w in caught if issubclass(w.category, PortableAttentionWarning)]
    assert bool(portable) == (not cpu_attention.fast_path())
    assert all("attention_kernel='ort'" in str(w.message) for w in portable)
    assert op_counts(opt).get("Int8Attention") == n_quantized  # ORT keeps the node: our kernel runs
    lowered = lower_onnx(qm, act="tensor", attention_kernel="lsgq")
    with torch.no_grad():
        assert sqnr(lowered(**inp), y) >= 40.0
        assert sqnr(m(**inp, return_dict=False)[0], y) >= 25.0
    rows = [r for r in lowered.report() if qm.plan.attention.get(r["layer"], {}).get("quantized")]
    assert rows and all(r["kernel"] == LSGQ_ATTENTION_KERNEL and r["real_kernel"] for r in rows)
    with pytest.raises(ValueError, match="attention_kernel"):
        lower_onnx(qm, attention_kernel="flash")
    parser = argparse.ArgumentParser(prog="lsgq")
    add_export_onnx_parser(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["export-onnx", "--attention-bits", "8", "--attention-kernel", "lsgq"])
    assert (args.attention_bits, args.attention_kernel) == (8, "lsgq")
