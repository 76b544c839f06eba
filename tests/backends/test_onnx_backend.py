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
from lsgq_compiler.metrics import sqnr

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
