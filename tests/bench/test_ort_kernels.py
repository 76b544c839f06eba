"""bench/ort_kernels.py: the per-kernel ONNX models are right (numerics against FP32), at small sizes."""
import importlib.util
from pathlib import Path

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
_spec = importlib.util.spec_from_file_location("ort_kernels", Path(__file__).resolve().parents[2] / "bench" / "ort_kernels.py")
ok = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ok)


@pytest.fixture(autouse=True)
def small(monkeypatch):
    monkeypatch.setattr(ok, "TOKENS", 96)


def test_gemm_kernels_agree_with_fp32():
    """int8 per tensor >= 30 dB, 8-bit blocks >= 35 dB, 4-bit blocks >= 15 dB against the FP32 MatMul
    (random weights): the packing of codes and zero points is what ORT expects."""
    feed = {"A": np.random.default_rng(0).standard_normal((1, ok.TOKENS, 64)).astype(np.float32)}
    res = ok.paired(ok.gemm_models(64, 96), feed, threads=1, iters=2)
    assert all("error" not in r for r in res.values()), res
    assert res["int8 DynamicQuantizeMatMul"]["sqnr_db"] >= 30.0
    for acc in (0, 4):
        assert res[f"MatMulNBits 8-bit, accuracy_level {acc}"]["sqnr_db"] >= 35.0
        assert res[f"MatMulNBits 4-bit, accuracy_level {acc}"]["sqnr_db"] >= 15.0


def test_attention_graphs_agree():
    """MHA with flash off is the same op (>= 100 dB); the int8 Q.K^T graph and lsgq's custom op >= 25 dB."""
    rng = np.random.default_rng(1)
    feed = {x: rng.standard_normal((1, ok.TOKENS, ok.HEADS * ok.HEAD_DIM)).astype(np.float32) for x in "qkv"}
    res = ok.paired(ok.attention_models(), feed, threads=1, iters=2)
    names = list(res)
    assert res[names[1]]["sqnr_db"] >= 100.0
    assert res[names[2]]["sqnr_db"] >= 25.0
    assert res[names[3]]["sqnr_db"] >= 25.0 and "Int8Attention" in names[3]
