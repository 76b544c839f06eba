"""onnxruntime sessions (with lsgq's custom-op library registered when a model uses it), feeds, op counts."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lsgq_compiler.capture import normalize_inputs
from lsgq_compiler.errors import user_error


INTEGER_OPS = ("QGemm", "QLinearMatMul", "MatMulInteger", "ConvInteger", "DynamicQuantizeMatMul",
               "MatMulIntegerToFloat", "MatMulNBits", "QLinearConv")

class PortableAttentionWarning(UserWarning):
    """A model with lsgq's ``Int8Attention`` op opened on a CPU without AVX-512 VNNI (its slow portable path runs)."""


def ort_session(path: str | Path, threads: int | None = None, optimized_path: str | Path | None = None,
                accuracy_level: int | None = None, spinning: bool | None = None):
    """An onnxruntime CPU session; ``optimized_path`` saves the graph after ORT's fusions.

    A model that uses lsgq's custom op (``com.lsgq`` domain) gets the op library registered; the
    op runs on ``threads`` threads (default: one per core). ``spinning``: whether ORT's idle
    intra-op threads busy-wait for the next op (ORT's default). None: ORT's default, except for
    models with lsgq ops, where it is off: the op runs its own threads, and ORT's spinning
    workers would take the cores from them."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    lsgq_ops = uses_lsgq_ops(path)
    if lsgq_ops:
        from lsgq_compiler.kernels.cpu_attention import fast_path, ort_library

        so.register_custom_ops_library(ort_library())
        if not fast_path():
            warnings.warn(PortableAttentionWarning(
                f"{Path(path).name} uses lsgq's Int8Attention op, and this CPU has no AVX-512 VNNI: the op runs its "
                "portable C++ path, far slower than onnxruntime's float attention (measured 27.5 s against 1.1 s "
                "per call of the whole shipped model on an AVX-only host); export with attention_kernel='ort' "
                "(lsgq export-onnx --attention-kernel ort) for this CPU"), stacklevel=2)
        if threads:
            os.environ["LSGQ_ATTENTION_THREADS"] = str(threads)
    if spinning is None:
        spinning = not lsgq_ops
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    if accuracy_level is not None:
        so.add_session_config_entry("session.qdq_matmulnbits_accuracy_level", str(accuracy_level))
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def uses_lsgq_ops(path: str | Path) -> bool:
    """True when the ONNX model at ``path`` imports the ``com.lsgq`` domain (lsgq's custom ops)."""
    import onnx

    from lsgq_compiler.kernels.cpu_attention import ORT_DOMAIN

    model = onnx.load(str(path), load_external_data=False)
    return any(o.domain == ORT_DOMAIN for o in model.opset_import)


def ort_feed(sess, example_inputs: Any) -> dict[str, np.ndarray]:
    """Map inputs (tuple, dict or tensor) to the session's input names (unused ones are dropped)."""
    args, kwargs = normalize_inputs(example_inputs)
    named = {f"args_{i}": a for i, a in enumerate(args)} | dict(kwargs)
    positional = [a for a in args]
    feed = {}
    for i, inp in enumerate(sess.get_inputs()):
        t = named.get(inp.name, positional[i] if i < len(positional) else None)
        if t is None:
            raise user_error(f"no value for ONNX input {inp.name!r}", f"pass inputs named {[x.name for x in sess.get_inputs()]}")
        feed[inp.name] = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return feed


def op_counts(path: str | Path) -> dict[str, int]:
    """``op_type -> count`` of an ONNX file (e.g. the ORT-optimised graph)."""
    import onnx

    counts: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
