"""Writing ONNX files: ``export_onnx`` (lower + export), ``export_lowered``, ``export_float_onnx``."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import fx, nn

from lsgq_compiler.api import QuantizedModel
from lsgq_compiler.capture import normalize_inputs
from lsgq_compiler.errors import user_error

from .lower import lower_onnx
from .ops import _translations
from .rewrite import export_graph, fold_lowbit_casts

OPSET = 21

class _Forward(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.model(*args, **kwargs)


def _export(gm: fx.GraphModule, path: Path, example_inputs: Any, opset: int, table: dict | None,
            contrib_ops: bool = True) -> Path:
    import onnx

    args, kwargs = normalize_inputs(example_inputs)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_Forward(export_graph(gm, contrib_ops)), args, kwargs=kwargs, dynamo=True, opset_version=opset,
                                 custom_translation_table=table, verbose=False)
    proto = fold_lowbit_casts(prog.model_proto)
    for n in proto.graph.node:  # the exporter's per-node stack traces: text larger than a small model
        del n.metadata_props[:]
        n.doc_string = ""
    tmp = path.with_name(f".{path.name}.tmp")
    try:  # written under a temporary name, then renamed: no half-written model at `path`
        onnx.save(proto, str(tmp))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def export_onnx(qm: QuantizedModel, path: str | Path, example_inputs: Any, *, act: str = "tensor",
                w4_block: int | None = 128, calib_data: Iterable[Any] | None = None, opset: int = OPSET,
                check: bool = True, contrib_ops: bool = True, attention_kernel: str = "ort") -> Path:
    """Write ``qm`` as an ONNX model whose quantized linears onnxruntime runs on integer kernels.

    Args:
        qm: a QuantizedModel from :func:`~lsgq_compiler.compile_quantized` (not modified).
        path: the ``.onnx`` file to write.
        example_inputs: inputs shaped as at compile time (tuple, dict or tensor).
        act: 8-bit activation quantization: ``"tensor"`` (per tensor, per call:
            ``DynamicQuantizeMatMul``), ``"token"`` (the plan's per-token quantizer on
            ``MatMulInteger``: the torch model's numbers, slower) or ``"static"`` (calibrated per
            tensor: ``QGemm``).
        w4_block: block size for 4-bit weights whose plan block ORT cannot fuse into MatMulNBits.
        calib_data: calibration batches for ``act="static"``.
        opset: ONNX opset (>= 21: blocked 4-bit DequantizeLinear).
        check: run ``onnx.checker`` (full check) on the result.
        contrib_ops: export full-precision attention as onnxruntime's fused
            ``com.microsoft.MultiHeadAttention`` (default); False keeps standard ONNX ops only,
            for other runtimes.
        attention_kernel: the plan's 8-bit attention as onnxruntime's own integer ops
            (``"ort"``) or as lsgq's fused custom op ``com.lsgq::Int8Attention`` (``"lsgq"``;
            run it in a session from :func:`ort_session`, which registers the op library).

    Returns:
        The path written. ``lower_onnx(qm, ...)`` gives the torch model with the same semantics.

    Example:
        >>> export_onnx(qm, "model.onnx", inputs)
        >>> sess = ort_session("model.onnx")
    """
    if opset < 21:
        raise user_error(f"opset {opset} has no blocked 4-bit DequantizeLinear", "use opset >= 21")
    lowered = lower_onnx(qm, act=act, w4_block=w4_block, calib_data=calib_data, example_inputs=example_inputs,
                         attention_kernel=attention_kernel)
    return export_lowered(lowered, path, example_inputs, opset, check, contrib_ops)


def export_lowered(lowered: QuantizedModel, path: str | Path, example_inputs: Any, opset: int = OPSET,
                   check: bool = True, contrib_ops: bool = True) -> Path:
    """Write a model from :func:`lower_onnx` as ONNX (see :func:`export_onnx`)."""
    out = _export(lowered.gm, Path(path), example_inputs, opset, _translations(), contrib_ops)
    if check:
        import onnx

        onnx.checker.check_model(str(out), full_check=True)
    return out


def export_float_onnx(model: nn.Module, path: str | Path, example_inputs: Any, opset: int = OPSET,
                      contrib_ops: bool = True) -> Path:
    """The full-precision model as ONNX (the baseline for ORT FP32 and ``onnxruntime.quantization``),
    through the same export rewrites as :func:`export_onnx`."""
    from lsgq_compiler.capture import capture

    return _export(capture(model, example_inputs).gm, Path(path), example_inputs, opset, _translations(),
                   contrib_ops)
