"""onnxruntime CPU kernels at the shipped model's shapes: what integer kernels can gain, op by op.

    python bench/ort_kernels.py [--threads 2] [--iters 30]

The shipped model (tiny-vsr, a Wan-style DiT) at the demo clip size (8 frames of 32x32 LQ) runs its
linears on its video tokens and self-attention over its heads; the shapes are read from
``tiny_vsr_config()`` (2026-12-03: 4,096 tokens of width 256, FFN 1,024, 4 heads x 64).
For each GEMM shape: FP32 ``MatMul + Add`` against ``DynamicQuantizeMatMul`` (int8 per tensor: what
the ``ort_int8_tensor`` export fuses to) and ``MatMulNBits`` with 8- and 4-bit weights
(``accuracy_level`` 0: float compute, 4: int8 activations). For attention: the fused
``MultiHeadAttention`` (MLAS flash attention), the same op with flash disabled, and the integer
Q.K^T graph that ``attention_bits=8`` exports (``DynamicQuantizeLinear`` + ``MatMulInteger``,
float softmax and P.V). All sessions of a shape live in one process and are called in rotation,
so the speed-ups are paired (the VM's speed drifts). Writes ``bench/results/ort_kernels.json``
(or under $OUT).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

def _shapes() -> tuple[int, int, int, int, int]:
    """``(tokens, width, ffn, heads, head_dim)`` of the shipped model on the evaluation tile (``lsgq eval``'s
    frames x TILE x TILE LQ pixels; the latent map is as large as the LQ tile: x4 bicubic, then 4x4
    space-to-depth), patched by the model's patch size (time padded to whole patches, as the model does)."""
    from lsgq_compiler.vsr.evaluate import DEFAULT_FRAMES, TILE
    from lsgq_compiler.vsr.models import tiny_vsr_config

    t = tiny_vsr_config()["transformer"]
    pt, ph, pw = t["patch_size"]
    heads, hd = t["num_attention_heads"], t["attention_head_dim"]
    return -(-DEFAULT_FRAMES // pt) * (TILE // ph) * (TILE // pw), heads * hd, t["ffn_dim"], heads, hd


TOKENS, WIDTH, FFN, HEADS, HEAD_DIM = _shapes()
GEMMS = {f"attention projections ({WIDTH} -> {WIDTH})": (WIDTH, WIDTH), f"FFN up ({WIDTH} -> {FFN})": (WIDTH, FFN),
         f"FFN down ({FFN} -> {WIDTH})": (FFN, WIDTH)}


def _model(nodes, inits, inputs: dict[str, list[int]], out_shape: list[int]) -> bytes:
    from onnx import TensorProto, helper

    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
                          [helper.make_tensor_value_info("Y", TensorProto.FLOAT, out_shape)], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    m.ir_version = 10
    return m.SerializeToString()


def gemm_models(k: int, n: int, block: int = 32, seed: int = 0) -> dict[str, bytes]:
    """``(1, TOKENS, k) @ (k, n) + bias`` as each ORT kernel; weights random, quantized symmetric."""
    from onnx import helper
    from onnx import numpy_helper as nh

    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((k, n)) * k ** -0.5).astype(np.float32)
    bias = rng.standard_normal(n).astype(np.float32)
    io = ({"A": [1, TOKENS, k]}, [1, TOKENS, n])
    out = {"fp32 MatMul": _model([helper.make_node("MatMul", ["A", "W"], ["T"]), helper.make_node("Add", ["T", "bias"], ["Y"])],
                                 [nh.from_array(w, "W"), nh.from_array(bias, "bias")], *io)}
    s = np.abs(w).max() / 127.0
    out["int8 DynamicQuantizeMatMul"] = _model(
        [helper.make_node("DynamicQuantizeMatMul", ["A", "Wq", "s", "", "bias"], ["Y"], domain="com.microsoft")],
        [nh.from_array(np.round(w / s).astype(np.int8), "Wq"), nh.from_array(np.array(s, np.float32), "s"),
         nh.from_array(bias, "bias")], *io)
    wb = w.T.reshape(n, k // block, block)
    for bits in (8, 4):
        top = 2 ** (bits - 1) - 1
        sc = np.abs(wb).max(-1) / top
        q = (np.round(wb / sc[..., None]) + top + 1).astype(np.uint8)
        if bits == 4:
            q = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        zp = np.full(n * (k // block), top + 1, np.uint8)
        if bits == 4:
            zp = np.full((n * (k // block) + 1) // 2, (top + 1) * 17, np.uint8)
        for acc in (0, 4):
            out[f"MatMulNBits {bits}-bit, accuracy_level {acc}"] = _model(
                [helper.make_node("MatMulNBits", ["A", "B", "S", "Z", "", "bias"], ["Y"], domain="com.microsoft",
                                  K=k, N=n, bits=bits, block_size=block, accuracy_level=acc)],
                [nh.from_array(q, "B"), nh.from_array(sc.reshape(-1).astype(np.float32), "S"), nh.from_array(zp, "Z"),
                 nh.from_array(bias, "bias")], *io)
    return out


def attention_models() -> dict[str, bytes]:
    """Self-attention over ``(1, TOKENS, HEADS * HEAD_DIM)`` q, k, v: fused MHA and the int8 Q.K^T graph."""
    from onnx import TensorProto, helper
    from onnx import numpy_helper as nh

    hid = HEADS * HEAD_DIM
    io = ({"q": [1, TOKENS, hid], "k": [1, TOKENS, hid], "v": [1, TOKENS, hid]}, [1, TOKENS, hid])
    mha = _model([helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["Y"], domain="com.microsoft",
                                   num_heads=HEADS, scale=HEAD_DIM ** -0.5)], [], *io)
    c = [nh.from_array(np.array(HEAD_DIM ** -0.5, np.float32), "scale"),
         nh.from_array(np.array([1, TOKENS, HEADS, HEAD_DIM], np.int64), "split"),
         nh.from_array(np.array([-2], np.int64), "tok"), nh.from_array(np.array([1, TOKENS, hid], np.int64), "merge")]
    nodes = []
    for x in "qkv":  # (B, N, H*D) -> (B, H, N, D)
        nodes += [helper.make_node("Reshape", [x, "split"], [f"{x}4"]),
                  helper.make_node("Transpose", [f"{x}4"], [f"{x}h"], perm=[0, 2, 1, 3])]
    nodes += [helper.make_node("Mul", ["qh", "scale"], ["qs"]),
              helper.make_node("DynamicQuantizeLinear", ["qs"], ["qu", "sq", "zq"]),
              helper.make_node("ReduceMean", ["kh", "tok"], ["km"], keepdims=1),
              helper.make_node("Sub", ["kh", "km"], ["kc"]),
              helper.make_node("DynamicQuantizeLinear", ["kc"], ["ku", "sk", "zk"]),
              helper.make_node("Transpose", ["ku"], ["kt"], perm=[0, 1, 3, 2]),
              helper.make_node("MatMulInteger", ["qu", "kt", "zq", "zk"], ["acc"]),
              helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT),
              helper.make_node("Mul", ["sq", "sk"], ["ss"]), helper.make_node("Mul", ["accf", "ss"], ["sc"]),
              helper.make_node("Softmax", ["sc"], ["p"], axis=-1), helper.make_node("MatMul", ["p", "vh"], ["o"]),
              helper.make_node("Transpose", ["o"], ["ot"], perm=[0, 2, 1, 3]),
              helper.make_node("Reshape", ["ot", "merge"], ["Y"])]
    lsgq = _model([helper.make_node("Int8Attention", ["q", "k", "v"], ["Y"], domain="com.lsgq",
                                    num_heads=HEADS, scale=HEAD_DIM ** -0.5)], [], *io)
    return {"fp32 MultiHeadAttention (MLAS flash)": mha, "fp32 MultiHeadAttention, flash disabled": mha,
            "int8 Q.K^T (DynamicQuantizeLinear + MatMulInteger), float softmax and P.V":
                _model(nodes, c, *io),
            "lsgq custom op com.lsgq::Int8Attention (fused, AVX-512 VNNI Q.K^T, fp32 P.V)": lsgq}


def paired(models: dict[str, bytes], feed: dict[str, np.ndarray], threads: int, iters: int,
           spinning: bool = True) -> dict:
    """Median ms per call, paired speed-up over the first model, and SQNR against it.
    ``spinning=False`` turns off ORT's idle-thread spinning in every session (lsgq's custom op
    runs its own threads, which spinning ORT workers would compete with)."""
    import onnxruntime as ort

    from lsgq_compiler.kernels.cpu_attention import ORT_DOMAIN, ort_library

    sessions = {}
    for name, blob in models.items():
        so = ort.SessionOptions()
        so.intra_op_num_threads, so.inter_op_num_threads, so.log_severity_level = threads, 1, 3
        if not spinning:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if ORT_DOMAIN.encode() in blob:
            so.register_custom_ops_library(ort_library())
            os.environ["LSGQ_ATTENTION_THREADS"] = str(threads)
        # MHA reads ORT_DISABLE_FLASH_ATTENTION when its kernel is built, i.e. at session creation
        os.environ["ORT_DISABLE_FLASH_ATTENTION"] = "1" if "flash disabled" in name else "0"
        try:
            sessions[name] = ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 - a kernel this build lacks is reported, not fatal
            sessions[name] = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
    os.environ.pop("ORT_DISABLE_FLASH_ATTENTION", None)
    live = {n: s for n, s in sessions.items() if not isinstance(s, str)}
    outs = {n: s.run(None, feed)[0] for n, s in live.items()}
    times: dict[str, list[float]] = {n: [] for n in live}
    names = list(live)
    for i in range(iters):
        for n in names[i % len(names):] + names[: i % len(names)]:
            t = time.perf_counter()
            live[n].run(None, feed)
            times[n].append(time.perf_counter() - t)
    base = names[0]
    ref = outs[base].astype(np.float64)
    res = {}
    for n, s in sessions.items():
        if isinstance(s, str):
            res[n] = {"error": s}
            continue
        err = float(((ref - outs[n]) ** 2).sum())
        res[n] = {"ms": round(1e3 * float(np.median(times[n])), 2),
                  "paired_speedup": round(float(np.median([b / x for b, x in zip(times[base], times[n])])), 2),
                  "sqnr_db": round(10 * float(np.log10((ref ** 2).sum() / err)), 1) if err > 0 else float("inf")}
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=30)
    args = ap.parse_args()
    import onnxruntime as ort

    rng = np.random.default_rng(1)
    res = {"onnxruntime": ort.__version__, "threads": args.threads, "iters": args.iters, "cpu": platform.processor()
           or platform.machine(), "tokens": TOKENS, "gemm": {}, "attention": {},
           "method": "all sessions of a group in one process, called in rotation; median ms and median per-call "
                     "ratio to the first (FP32) entry; SQNR against it"}
    for label, (k, n) in GEMMS.items():
        feed = {"A": rng.standard_normal((1, TOKENS, k)).astype(np.float32)}
        res["gemm"][label] = paired(gemm_models(k, n), feed, args.threads, args.iters)
        print(label, json.dumps(res["gemm"][label]), flush=True)
    feed = {x: rng.standard_normal((1, TOKENS, HEADS * HEAD_DIM)).astype(np.float32) for x in "qkv"}
    res["attention"] = paired(attention_models(), feed, args.threads, max(args.iters // 3, 5))
    print("attention", json.dumps(res["attention"]), flush=True)
    res["attention_no_spinning"] = paired(attention_models(), feed, args.threads, max(args.iters // 3, 5),
                                          spinning=False)
    res["attention_note"] = ("attention: ORT's default idle-thread spinning in every session; attention_no_spinning: "
                             "spinning off in every session (what ort_session does for models with lsgq's op)")
    print("attention_no_spinning", json.dumps(res["attention_no_spinning"]), flush=True)
    out = Path(os.environ.get("OUT", Path(__file__).resolve().parent / "results")) / "ort_kernels.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, out)
    print("wrote", out)


if __name__ == "__main__":
    main()
