"""Lowering a QuantizedModel for ONNX: every planned linear to its integer core, 8-bit attention to
its op, static activation ranges from calibration."""
from __future__ import annotations

import warnings
from typing import Any, Iterable

import torch
from torch import fx

from lsgq_compiler.api import QuantizedModel
from lsgq_compiler.capture import normalize_inputs
from lsgq_compiler.errors import user_error
from lsgq_compiler.qlinear import QuantLinear

from ..common import full_precision_info, lower_layers
from .cores import DQCore, DynamicInt8Core, StaticInt8Core, TokenInt8Core, container_bits, nbits_fusable

ACT_MODES = ("tensor", "token", "static")

def _info(kernel: str, real: bool, note: str) -> dict[str, Any]:
    return {"backend": "onnxruntime", "kernel": kernel, "real_kernel": real, "note": note}


def _w4_block(layer: QuantLinear, w4_block: int | None) -> int | None:
    """``None`` (keep the plan's codes) unless the plan's block cannot fuse and ``w4_block`` divides K."""
    s = layer.spec
    plan_block = s.group_size if s.weight_granularity == "group" else layer.in_features
    if w4_block is None or nbits_fusable(4, plan_block) or layer.in_features % w4_block:
        return None
    return w4_block


def lower_onnx(qm: QuantizedModel, act: str = "tensor", w4_block: int | None = 128,
               calib_data: Iterable[Any] | None = None, example_inputs: Any = None,
               attention_kernel: str = "ort") -> QuantizedModel:
    """A copy of ``qm`` with every linear in its ONNX-export form (a torch model with the
    exported graph's semantics: run it to check ORT parity, or pass it to :func:`export_onnx`).

    Args:
        act: 8-bit activations ``"tensor"`` (per tensor, per call), ``"token"`` (the plan's
            per-token quantizer, exact but slower) or ``"static"`` (per tensor, from calibration on
            ``calib_data``, or on ``example_inputs`` with a warning).
        w4_block: block size for 4-bit weights (with 8- or 16-bit activations) whose plan
            block ORT cannot fuse (per-row weights with K not a power of two); None keeps them.
        attention_kernel: for the plan's 8-bit attention layers: ``"ort"`` (onnxruntime's
            own ops: ``DynamicQuantizeLinear`` + ``MatMulIntegerToFloat`` for ``Q K^T``, per
            tensor) or ``"lsgq"`` (lsgq's fused custom op ``com.lsgq::Int8Attention``, an
            AVX-512 VNNI kernel; sessions from :func:`ort_session` register it).
    """
    if attention_kernel not in ATTENTION_KERNELS:
        raise user_error(f"attention_kernel={attention_kernel!r} is not an ONNX attention kernel",
                         f"use one of {ATTENTION_KERNELS}")
    if act not in ACT_MODES:
        raise user_error(f"act={act!r} is not an ONNX activation mode", f"use one of {ACT_MODES}")

    def make_core(layer: QuantLinear):
        s = layer.spec
        if not s.quantized:
            return None, full_precision_info("onnxruntime", "MatMul/Gemm (float)")
        w, a, mode = s.weight_bits, s.act_bits, s.act_quantizer
        plain_act = mode in ("dynamic", "static") and s.act_granularity in ("token", "tensor")
        if (w == 8 and a == 8 and act == "token" and mode == "dynamic" and s.act_granularity == "token"
                and s.weight_granularity == "row"):
            return TokenInt8Core(layer), _info("MatMulInteger (uint8 x uint8, per-token codes)", True,
                                               "the plan's quantizers exactly: per-token activations, per-row weights")
        if w == 8 and a == 8 and plain_act:
            note = "activations uint8 per tensor" + (" (plan: per token)" if s.act_granularity == "token" else "")
            note += "; weights int8 symmetric per channel (stored uint8 + 128)"
            if act in ("token", "tensor"):
                return DynamicInt8Core(layer), _info("DynamicQuantizeLinear + MatMulInteger (DynamicQuantizeMatMul)",
                                                     True, note)
            return StaticInt8Core(layer), _info("QDQ -> QGemm", True, note + "; static ranges, output requantized")
        if w is not None and (a is None or (w == 4 and a == 8 and plain_act)):
            block = _w4_block(layer, w4_block) if w == 4 else None
            core = DQCore(layer, block, act_quant=False)
            fused = nbits_fusable(w, core.block)
            note = ("" if block is None else f"requantized in blocks of {block} for MatMulNBits; ") + (
                "activations int8 per block inside MatMulNBits (ORT accuracy_level 4)" if a and fused else
                "activations kept in float (no A8 x W4 kernel without MatMulNBits)" if a else "")
            cb = container_bits(w)
            kernel = f"MatMulNBits (uint{cb} weights)" if fused else f"DequantizeLinear(uint{cb}) + MatMul (float)"
            return core, _info(kernel, fused, note)
        if w is None:
            return None, _info("fake-quant activations (float ops) + MatMul", False, "simulated")
        core = DQCore(layer, None, act_quant=True)
        fused = nbits_fusable(w, core.block)
        kernel = ("fake-quant activations (float ops) + " +
                  ("MatMulNBits" if fused else f"DequantizeLinear(uint{container_bits(w)}) + MatMul"))
        return core, _info(kernel, False, f"no {s.fmt} integer kernel in onnxruntime: simulated, "
                                          "semantics of the torch fake-quant model")

    out = lower_layers(qm, make_core, f"onnx ({act})")
    _lower_attention(out, attention_kernel)
    if act == "static":
        _calibrate_static(out, calib_data, example_inputs)
    return out


ATTENTION_KERNELS = ("ort", "lsgq")
ATTENTION_KERNEL = "DynamicQuantizeLinear x2 + MatMulIntegerToFloat (uint8 Q.K^T per tensor), float P.V"
LSGQ_ATTENTION_KERNEL = "com.lsgq::Int8Attention (lsgq custom op: INT8 Q.K^T on AVX-512 VNNI, fp32 P.V, fused)"


def _lower_attention(lowered: QuantizedModel, kernel: str = "ort") -> int:
    """Swap ``lsgq::int8_attention`` (per-block int8, the CUDA kernel's numerics) for its ONNX
    form in ``lowered`` (a copy made by :func:`lower_layers`): ``kernel="ort"``:
    ``lsgq_onnx::int8_tensor_attention`` (per-tensor uint8, what ORT fuses into one integer op);
    ``"lsgq"``: ``lsgq_onnx::cpu_int8_attention`` (lsgq's custom op). Returns the number swapped."""
    import lsgq_compiler.kernels.attention  # noqa: F401  (registers lsgq::int8_attention)

    target = torch.ops.lsgq.int8_attention.default
    g = lowered.gm.graph
    count = 0
    for n in list(g.nodes):
        if n.op != "call_function" or n.target is not target:
            continue
        q, k, v, scale = n.args[:4]
        smooth = n.args[4] if len(n.args) > 4 else n.kwargs.get("smooth_k", True)
        qv = q.meta.get("val") if isinstance(q, fx.Node) else None
        with g.inserting_before(n):
            if kernel == "lsgq":
                if qv is None or qv.ndim != 4 or qv.shape[-1] % 4 or qv.shape[-1] > 128:
                    raise user_error(f"attention node {n.name} has no 4-D shape with head dim <= 128 (multiple of 4)",
                                     "export with attention_kernel='ort'")
                new = g.call_function(torch.ops.lsgq_onnx.cpu_int8_attention.default,
                                      (q, k, v, float(scale), int(qv.shape[1])))
            else:
                new = g.call_function(torch.ops.lsgq_onnx.int8_tensor_attention.default,
                                      (q, k, v, float(scale), bool(smooth)))
        new.meta.update(n.meta)
        n.replace_all_uses_with(new)
        g.erase_node(n)
        count += 1
    if count:
        lowered.gm.recompile()
        note = ("plan: int8 per block of tokens; per tensor in ONNX" if kernel == "ort" else
                "plan: int8 per block of tokens; the custom op: Q per row, K per 64 keys")
        for rec in lowered.plan.attention.values():
            if rec.get("quantized"):
                rec.update(kernel=ATTENTION_KERNEL if kernel == "ort" else LSGQ_ATTENTION_KERNEL,
                           backend="onnxruntime", real_kernel=True, note=note)
    return count


def _calibrate_static(lowered: QuantizedModel, calib_data, example_inputs) -> None:
    from lsgq_compiler.calibration import WeakCalibrationWarning, run_batches

    cores = [m for m in lowered.modules() if isinstance(m, StaticInt8Core)]
    if not cores:
        return
    if calib_data is None:
        if example_inputs is None:
            raise user_error("act='static' needs calibration inputs", "pass calib_data=[inputs, ...] (or example_inputs)")
        warnings.warn("static ONNX activation ranges calibrated on the example inputs only, which is weak; "
                      "pass calib_data", WeakCalibrationWarning, stacklevel=3)
        calib_data = [example_inputs]
    batches = [normalize_inputs(b, f"calib_data[{i}]") for i, b in enumerate(calib_data)]
    for c in cores:
        c.observe()
    run_batches(lowered, batches, "calibrating ONNX ranges", progress=False)
    for c in cores:
        c.finalize()
