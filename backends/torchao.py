"""Lower a :class:`QuantizedModel` to torchao's real kernels, layer by layer, per its plan.

Per layer (``spec.fmt``, activation quantizer):

====================  =====================================================  ==============
format                lowered to                                             real kernel
====================  =====================================================  ==============
W8A8 dynamic          ``Int8DynamicActivationInt8WeightConfig``              int8 GEMM
                      (``torch._int_mm``; per-token or per-tensor act)       (CPU, CUDA)
W8A8 dynamic, fp8     ``Float8DynamicActivationFloat8WeightConfig`` (PerRow)  CUDA sm_89+
W8A8 static           as W8A8 dynamic (torchao's static path wants 2-D        int8 GEMM
                      activation scales; the note says so)
WxA8 DRAQ             :class:`~.draq_int8.DRAQInt8Linear` (deployable form)   ``torch._int_mm``
W2-7 A8 dynamic       ``Int8DynamicActivationIntxWeightConfig``               only with torchao's
W2-8 A16              ``IntxWeightOnlyConfig`` / ``Int8WeightOnlyConfig``      CPU kernel library
W4A4, W6A6, ...       kept as fake-quant QuantLinear                          no (simulated)
====================  =====================================================  ==============

torchao quantizes weights symmetrically per row (the plan may say asymmetric): a small,
documented deviation. Without torchao's CPU kernel library (x86 builds of torchao 0.18 ship
none), the intx configs store integer weights but dequantize them and run a float GEMM;
``report()`` says ``real_kernel: False`` for those layers.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from lsgq_compiler.api import QuantizedModel
from lsgq_compiler.errors import user_error
from lsgq_compiler.qlinear import QuantLinear

from .common import LoweredLinear, full_precision_info, lower_layers, simulated_info
from .draq_int8 import DRAQInt8Linear


def fp8_supported(device: str | torch.device) -> bool:
    """FP8 GEMMs (``torch._scaled_mm``) need a CUDA GPU of compute capability 8.9 or newer."""
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(dev) >= (8, 9)


def intx_kernels_available() -> bool:
    """True when torchao's CPU kernel library (packed low-bit weights) is loaded."""
    try:
        from torchao.quantization.quantize_.workflows.intx.intx_opaque_tensor import _is_kernel_library_loaded

        return bool(_is_kernel_library_loaded())
    except Exception:  # noqa: BLE001 - any import/registration failure means: not available
        return False


def _opaque_format():
    from torchao.quantization.quantize_.workflows.intx.intx_packing_format import IntxPackingFormat

    return IntxPackingFormat.OPAQUE_TORCHAO_AUTO


def _intx_args(spec) -> dict[str, Any]:
    from torchao.quantization.granularity import PerAxis, PerGroup
    from torchao.quantization.quant_primitives import MappingType

    gran = PerGroup(spec.group_size) if spec.weight_granularity == "group" else PerAxis(0)
    mapping = MappingType.SYMMETRIC if spec.weight_symmetric else MappingType.ASYMMETRIC
    return {"weight_dtype": getattr(torch, f"int{spec.weight_bits}"), "granularity": gran, "mapping": mapping}


def torchao_config(spec, device: str | torch.device = "cpu", fp8: bool = False):
    """The torchao config for one layer, or ``None`` when torchao has no kernel for it.

    Returns ``(config, kernel_info)``.
    """
    import torchao.quantization as tq
    from torchao.quantization.granularity import PerRow, PerTensor
    from torchao.quantization.quant_primitives import MappingType

    w, a, mode = spec.weight_bits, spec.act_bits, spec.act_quantizer
    cpu = torch.device(device).type == "cpu"
    if w == 8 and a == 8 and mode in ("dynamic", "static") and spec.act_granularity in ("token", "tensor"):
        if fp8:
            cfg = tq.Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
            return cfg, {"backend": "torchao", "kernel": "Float8DynamicActivationFloat8Weight (torch._scaled_mm, "
                         "per-row fp8 e4m3)", "real_kernel": True, "note": "fp8 instead of int8 (fp8=True)"}
        act_gran = PerRow() if spec.act_granularity == "token" else PerTensor()
        mapping = MappingType.SYMMETRIC if spec.act_symmetric else MappingType.ASYMMETRIC
        cfg = tq.Int8DynamicActivationInt8WeightConfig(act_mapping_type=mapping, granularity=[act_gran, PerRow()])
        note = "weights symmetric per row"
        if mode == "static":
            note += "; the plan's static activation range is replaced by a dynamic one"
        return cfg, {"backend": "torchao", "kernel": "Int8DynamicActivationInt8Weight (torch._int_mm)",
                     "real_kernel": True, "note": note}
    if w is not None and w <= 8 and a == 8 and mode == "dynamic":
        real = intx_kernels_available()
        xa = _intx_args(spec)
        kw = {"intx_packing_format": _opaque_format()} if real else {}
        cfg = tq.Int8DynamicActivationIntxWeightConfig(weight_dtype=xa["weight_dtype"], weight_granularity=xa["granularity"],
                                                       weight_mapping_type=xa["mapping"], **kw)
        kernel = (f"_linear_8bit_act_{w}bit_weight (torchao CPU kernels)" if real else
                  "Int8DynamicActivationIntxWeight: int8 codes dequantized + aten.linear")
        return cfg, {"backend": "torchao", "kernel": kernel, "real_kernel": real,
                     "note": "activations asymmetric per token" + ("" if real else
                             "; torchao's CPU kernel library is not loaded, the GEMM runs in float")}
    if w is not None and w <= 8 and a is None:
        if w == 8 and spec.weight_granularity == "row":
            return tq.Int8WeightOnlyConfig(), {
                "backend": "torchao", "kernel": "Int8WeightOnly: int8 weight upcast + aten.mm", "real_kernel": False,
                "note": "weight-only int8 saves memory; the GEMM runs in float" if cpu else "weights symmetric"}
        real = intx_kernels_available()
        xa = _intx_args(spec)
        kw = {"intx_packing_format": _opaque_format()} if real else {}
        cfg = tq.IntxWeightOnlyConfig(weight_dtype=xa["weight_dtype"], granularity=xa["granularity"],
                                      mapping_type=xa["mapping"], **kw)
        return cfg, {"backend": "torchao", "kernel": "IntxWeightOnly" + ("" if real else ": dequantize + aten.linear"),
                     "real_kernel": real, "note": "" if real else "torchao's CPU kernel library is not loaded"}
    return None, {}


class _TorchaoCore(nn.Module):
    """A plain ``nn.Linear(W_R, b)`` quantized in place by ``torchao.quantize_``. FP8 rowwise
    needs bf16 weights: such a core computes in bf16 and returns the input's dtype."""

    def __init__(self, layer: QuantLinear, config, device: torch.device) -> None:
        super().__init__()
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, quantize_

        self.compute_dtype = torch.bfloat16 if isinstance(config, Float8DynamicActivationFloat8WeightConfig) else None
        lin = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None, device=device,
                        dtype=self.compute_dtype)
        with torch.no_grad():
            lin.weight.copy_(layer.weight.detach())
            if layer.bias is not None:
                lin.bias.copy_(layer.bias.detach())
        quantize_(lin, config, device=device)
        self.linear = lin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.compute_dtype is None:
            return self.linear(x)
        return self.linear(x.to(self.compute_dtype)).to(x.dtype)


def torchao_core(layer: QuantLinear, device: str | torch.device = "cpu", fp8: bool = False):
    """``(core, kernel_info)`` for one layer; ``core`` is None where the layer stays as it is
    (full precision, or fake-quant where no real kernel exists)."""
    device = torch.device(device)
    s = layer.spec
    if not s.quantized:
        return None, full_precision_info("torch", "aten.linear (float)")
    if s.act_bits == 8 and s.act_quantizer in ("draq", "draq_static"):
        return DRAQInt8Linear(layer).to(device), {
            "backend": "lsgq", "kernel": "DRAQ deployable form (torch._int_mm)", "real_kernel": True,
            "note": "per call: channel range from X, W diag(s) requantized to int8 per row"
                    if s.act_quantizer == "draq" else "calibrated channel range folded into int8 weights"}
    cfg, info = torchao_config(s, device, fp8)
    if cfg is None:
        why = (f"no {s.fmt} kernel on {device.type} (torchao has no sub-8-bit activation kernels)"
               if s.act_bits and s.act_bits < 8 else f"no torchao kernel for {s.fmt} with {s.act_quantizer} "
               f"{s.act_granularity} activations")
        return None, simulated_info("fake-quant", why)
    return _TorchaoCore(layer, cfg, device), info


def lower_torchao_layer(layer: QuantLinear, device: str | torch.device = "cpu", fp8: bool = False) -> QuantLinear:
    """One layer lowered: a :class:`LoweredLinear`, or ``layer`` itself with ``kernel_info`` set."""
    core, info = torchao_core(layer, device, fp8)
    if core is None:
        layer.kernel_info = info
        return layer
    return LoweredLinear(layer, core, info)


def lower_torchao(qm: QuantizedModel, device: str | torch.device = "cpu", fp8: bool = False) -> QuantizedModel:
    """Return a copy of ``qm`` whose linears run torchao / integer kernels where they exist.

    Args:
        qm: the result of :func:`lsgq_compiler.compile_quantized` (not modified).
        device: where the lowered model runs (``"cpu"`` or ``"cuda"``).
        fp8: W8A8 layers as FP8 (e4m3, per-row scales) instead of int8; CUDA sm_89+ only.

    Returns:
        A new :class:`QuantizedModel`; ``report()`` lists each layer's kernel and whether it
        is a real low-precision kernel or a simulation.

    Example:
        >>> fast = lower_torchao(qm)
        >>> [r for r in fast.report() if not r["real_kernel"]]  # what still runs simulated
    """
    device = torch.device(device)
    if fp8 and not fp8_supported(device):
        raise user_error(f"fp8=True needs a CUDA GPU with compute capability >= 8.9 (device={device})",
                         "lower with fp8=False (int8) on this machine")
    out = lower_layers(qm, lambda layer: torchao_core(layer, device, fp8),
                       f"torchao ({device.type}{', fp8' if fp8 else ''})")
    return out.to(device)
