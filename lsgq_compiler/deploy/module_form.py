"""The module form: the user's own model class with planned layers in deploy form.

:func:`to_module_form` deep-copies the user's eager model (never mutating it), replaces each
quantized linear of the plan by a :class:`~.modules.DeployLinear` holding the compiled layer's
tensors (packed codes, scales, low-rank factors, smoothing, Hadamard signs) and wraps each
quantized attention layer's processor (diffusers ``set_processor``) in an 8-bit one. No graph
and no ``torch.export``: it runs at any input shape and under ``torch.compile``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from lsgq_compiler.errors import user_error

from .modules import DeployLinear, int8_processor

FORMAT_VERSION = 1
QUANT_METHOD = "lsgq"
UNSUPPORTED_LAYERS = {"HSVDLinear": "H-SVD block rank-1 terms (qdit4sr)", "BiasAlignedLinear": "LBA (quantvsr)",
                      "LoweredLinear": "a backend's lowered layer"}


def _kind(spec) -> str:
    rec = spec.extra.get("target")
    return rec["kind"] if rec else "sim"


def layer_kind(qm: Any) -> dict[str, str]:
    """Module path -> deploy kind of each quantized linear of ``qm``."""
    return {p: _kind(m.spec) for p, m in qm.quant_linears().items() if m.spec.quantized}


def quantization_config(qm: Any, layers: dict[str, dict], attention: dict[str, dict]) -> dict[str, Any]:
    """The ``quantization_config`` of ``config.json`` (JSON-able)."""
    return {"quant_method": QUANT_METHOD, "format_version": FORMAT_VERSION, "target": qm.config.target,
            "model_class": qm.plan.model_class, "recipe": qm.config.recipe, "config": qm.config.to_dict(),
            "layers": layers, "attention": attention, "plan": qm.plan.to_dict()}


def to_module_form(qm: Any, model: nn.Module | None = None) -> nn.Module:
    """Build the deploy module form of ``qm`` (a :class:`~lsgq_compiler.QuantizedModel`).

    Args:
        qm: the compiled model (fake-quant, not lowered).
        model: the user's eager model ``qm`` was compiled from (default: the one
            ``compile_quantized`` was given, if still alive). Deep-copied, never modified.

    Returns:
        An instance of ``type(model)`` whose planned linears are :class:`DeployLinear` and whose
        quantized attention layers use 8-bit processors; ``module._lsgq_quantization_config``
        holds what ``save_pretrained`` writes.
    """
    from lsgq_compiler.api import QuantizedModel

    if not isinstance(qm, QuantizedModel):
        raise user_error(f"to_module_form takes a QuantizedModel, got {type(qm).__name__}",
                         "pass the result of compile_quantized(...)", TypeError)
    if qm.info.get("lowered"):
        raise user_error("this QuantizedModel is lowered to a backend", "pass the model compile_quantized returned")
    if model is None:
        ref = getattr(qm, "_source_model", None)
        model = ref() if ref is not None else None
        if model is None:
            raise user_error("the model this QuantizedModel was compiled from is not available",
                             "pass it: save_pretrained(qm, dir, model=model)")
    if type(model).__name__ != qm.plan.model_class:
        raise user_error(f"model is a {type(model).__name__}, but qm was compiled from a {qm.plan.model_class}",
                         "pass the model compile_quantized was given")
    out = copy.deepcopy(model).eval()
    layers: dict[str, dict] = {}
    for path, m in qm.quant_linears().items():
        if not m.spec.quantized:
            continue
        if type(m).__name__ in UNSUPPORTED_LAYERS:
            raise user_error(f"{path} is a {type(m).__name__}: {UNSUPPORTED_LAYERS[type(m).__name__]} has no deploy form",
                             "deploy a recipe such as minmax, lsgquant, smoothquant, quarot, svdquant or viditq")
        try:
            old = out.get_submodule(path)
        except AttributeError:
            raise user_error(f"the plan's layer {path} is not in the given {type(model).__name__}",
                             "pass the model compile_quantized was given") from None
        if getattr(old, "weight", None) is None or tuple(old.weight.shape) != (m.out_features, m.in_features):
            raise user_error(f"{path} in the given model is not the ({m.out_features}, {m.in_features}) linear "
                             "of the plan", "pass the model compile_quantized was given")
        dev = DeployLinear.from_quant_linear(m, _kind(m.spec))
        out.set_submodule(path, dev)
        layers[path] = dev.layer_config()
    attention = {}
    min_kv = int(qm.config.options.get("attention_min_kv", 256))
    for path, rec in qm.plan.attention.items():
        if not rec.get("quantized"):
            continue
        attention[path] = {"min_kv": min_kv, "format": rec.get("format", "int8-qk/16bit-pv")}
    apply_attention(out, attention)
    out._lsgq_quantization_config = quantization_config(qm, layers, attention)
    return out


def _checkpoint_submodule(model: nn.Module, path: str, what: str) -> nn.Module:
    """``model.get_submodule(path)``, or a clear error: the checkpoint names a module this model lacks."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise user_error(f"{what} {path} of the checkpoint is not in this {type(model).__name__}",
                         "the checkpoint belongs to another model (class or config)") from None


def apply_attention(model: nn.Module, attention: dict[str, dict]) -> None:
    """Wrap the processor of each attention module in ``attention`` (path -> ``{"min_kv": ...}``)."""
    for path, rec in attention.items():
        attn = _checkpoint_submodule(model, path, "attention layer")
        if not hasattr(attn, "set_processor") or not hasattr(attn, "processor"):
            raise user_error(f"{path} ({type(attn).__name__}) has no diffusers attention processor to replace",
                             "8-bit attention in the module form needs diffusers attention modules")
        inner = attn.processor
        if getattr(inner, "lsgq_int8", False):
            continue
        attn.set_processor(int8_processor(inner, rec.get("min_kv", 256)))


def build_skeleton_layers(model: nn.Module, layers: dict[str, dict], device: Any = "meta") -> None:
    """Replace each planned linear of ``model`` by an empty :class:`DeployLinear` (on ``device``)."""
    for path, cfg in layers.items():
        old = _checkpoint_submodule(model, path, "layer")
        w = getattr(old, "weight", None)
        if w is None or tuple(w.shape) != (cfg["out_features"], cfg["in_features"]):
            raise user_error(f"layer {path} of the checkpoint does not match this {type(model).__name__}",
                             "the checkpoint belongs to another model (class or config)")
        model.set_submodule(path, DeployLinear(cfg, device=device))


def prepare(model: nn.Module) -> nn.Module:
    """Build every deploy layer's kernel layout on its device (CUDA); returns ``model``."""
    for m in model.modules():
        if isinstance(m, DeployLinear):
            m.prepare()
    return model


def deploy_report(model: nn.Module) -> list[dict[str, Any]]:
    """One row per deploy layer and 8-bit attention: ``layer``, ``kind``, ``kernel``, ``real_kernel``."""
    rows = []
    for name, m in model.named_modules():
        if isinstance(m, DeployLinear):
            dev = next((b.device.type for b in m.buffers() if b is not None), "cpu")
            rows.append({"layer": name, "kind": m.kind, **m.kernel_info(dev)})
        proc = getattr(m, "processor", None)
        if proc is not None and getattr(proc, "lsgq_int8", False):
            dev = next((p.device.type for p in m.parameters()), "cpu")
            rows.append({"layer": name, "kind": "int8-attention",
                         "kernel": "lsgq::int8_attention (" + ("Triton" if dev == "cuda" else "CPU reference") + ")",
                         "real_kernel": dev == "cuda", "backend": "lsgq deploy"})
    return rows


def is_module_form(obj: Any) -> bool:
    return isinstance(obj, nn.Module) and hasattr(obj, "_lsgq_quantization_config")


def cast_float(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the model's float parameters and non-deploy float buffers to ``dtype`` (deploy layers keep
    their storage dtypes; their bias and smoothing follow ``dtype``)."""
    for m in model.modules():
        if isinstance(m, DeployLinear):
            for name in ("bias", "smooth", "rot_signs"):
                t = getattr(m, name)
                if t is not None:
                    setattr(m, name, t.to(dtype))
            continue
        for name, p in list(m.named_parameters(recurse=False)):
            if p.is_floating_point():
                p.data = p.data.to(dtype)
