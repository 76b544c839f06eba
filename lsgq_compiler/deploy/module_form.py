"""The module form: the user's own model class with planned layers in deploy form.

:func:`to_module_form` deep-copies the user's eager model (never mutating it), replaces each
quantized linear of the plan by a :class:`~.modules.DeployLinear` holding the compiled layer's
tensors (packed codes, scales, low-rank factors, smoothing, Hadamard signs) and wraps each
quantized attention layer's processor (diffusers ``set_processor``) in an 8-bit one. No graph
and no ``torch.export``: it runs at any input shape and under ``torch.compile``.

Simulated (``sim``) layers reproduce the compiled layer exactly: their low-rank factors keep the
compiled precision, a learned output bias (LBA, quantvsr) is folded into the bias, and an
activation quantizer that :class:`DeployLinear` does not describe itself (the peer recipes'
learnable, clipped or per-channel static ones) is stored as its class name, scalar attributes
and tensors (:func:`quantizer_config` / :func:`build_quantizer`).
"""
from __future__ import annotations

import copy
import importlib
from typing import Any

import torch
from torch import nn

from lsgq_compiler.errors import user_error

from .modules import DeployLinear, fuse_gelu, int8_processor, share_prologues

FORMAT_VERSION = 2  # 2: config.json checksum; sim layers with lowrank_dtype and stored quantizers
QUANT_METHOD = "lsgq"
UNSUPPORTED_LAYERS = {"HSVDLinear": "H-SVD block rank-1 terms (qdit4sr)", "LoweredLinear": "a backend's lowered layer"}


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
    model = source_model(qm, model)
    planned = {}
    for path, m in qm.quant_linears().items():
        if not m.spec.quantized:
            continue
        if type(m).__name__ in UNSUPPORTED_LAYERS:
            raise user_error(f"{path} is a {type(m).__name__}: {UNSUPPORTED_LAYERS[type(m).__name__]} has no deploy form",
                             "deploy another recipe of `lsgq recipes` (the others all have one)")
        try:
            old = model.get_submodule(path)
        except AttributeError:
            raise user_error(f"the plan's layer {path} is not in the given {type(model).__name__}",
                             "pass the model compile_quantized was given") from None
        if getattr(old, "weight", None) is None or tuple(old.weight.shape) != (m.out_features, m.in_features):
            raise user_error(f"{path} in the given model is not the ({m.out_features}, {m.in_features}) linear "
                             "of the plan", "pass the model compile_quantized was given")
        planned[path] = (m, old)
    # copy the model without the planned linears (replaced below): their full-precision weights,
    # most of the model's bytes, are never duplicated (11 GB for CogVideoX1.5-5B in bf16)
    memo: dict[int, Any] = {id(old): nn.Identity() for _, old in planned.values()}
    out = copy.deepcopy(model, memo).eval()
    layers: dict[str, dict] = {}
    for path, (m, _) in planned.items():
        dev = _deploy_layer(m, _kind(m.spec))
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


def source_model(qm: Any, model: nn.Module | None = None) -> nn.Module:
    """The eager model ``qm`` was compiled from: ``model`` if given (checked against the plan's
    class), else the one ``compile_quantized`` was given, if still alive."""
    from lsgq_compiler.api import QuantizedModel

    if not isinstance(qm, QuantizedModel):
        raise user_error(f"expected a QuantizedModel, got {type(qm).__name__}",
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
    return model


class _CompiledLayer:
    """A compiled layer as :meth:`DeployLinear.from_quant_linear` reads it, with some attributes
    replaced (the bias with LBA folded in; an activation quantizer stored separately)."""

    def __init__(self, m: nn.Module, **replaced: Any) -> None:
        self._m, self._replaced = m, replaced

    def __getattr__(self, name: str) -> Any:
        return self._replaced[name] if name in self._replaced else getattr(self._m, name)


def _deploy_knows(aq: nn.Module) -> bool:
    """Whether :class:`DeployLinear` describes this activation quantizer itself (``modules._act_config``)."""
    from lsgq_compiler.quantizers import ActQuant

    from .numerics import TargetActQuant

    return type(aq) is ActQuant or type(aq).__name__ == "GroupActQuant" or isinstance(aq, TargetActQuant)


def _deploy_layer(m: nn.Module, kind: str) -> DeployLinear:
    """The deploy form of the compiled layer ``m``; ``sim`` layers compute what ``m`` computes."""
    replaced: dict[str, Any] = {}
    lba = getattr(m, "lba", None)
    if lba is not None:  # LBA: y + lba, folded into the bias (added after the GEMM either way)
        replaced["bias"] = lba.detach().clone() if m.bias is None else m.bias.detach() + lba.detach()
    stored_aq = kind == "sim" and m.aq is not None and not _deploy_knows(m.aq)
    if stored_aq:
        replaced["aq"] = None
    dev = DeployLinear.from_quant_linear(_CompiledLayer(m, **replaced) if replaced else m, kind)
    if stored_aq:
        qcfg = quantizer_config(m.aq, f"{m.spec.module_path}: its activation quantizer")
        aq = build_quantizer(qcfg, device=m.weight.device)
        aq.load_state_dict({k: v.detach().clone() for k, v in m.aq.state_dict().items()}, assign=True)
        dev.aq = aq
        dev.cfg["act"] = {"cls": "stored", "quantizer": qcfg}
    if kind == "sim" and m.lr_down is not None and m.lr_down.dtype != torch.bfloat16:
        _set_lowrank(dev, m.lr_down.detach().clone(), m.lr_up.detach().clone())
    return dev


def _set_lowrank(dev: DeployLinear, down: torch.Tensor, up: torch.Tensor) -> None:
    """Store a sim layer's low-rank factors at their own precision (``DeployLinear`` makes them bf16),
    keeping ``restore_dtypes`` in step."""
    dev.lr_down, dev.lr_up = down, up
    dev._dtypes.update(lr_down=down.dtype, lr_up=up.dtype)
    dev.cfg["lowrank_dtype"] = str(down.dtype).replace("torch.", "")


_MODULE_INTERNALS = frozenset(vars(nn.Module()))
_SCALARS = (bool, int, float, str, type(None))


def quantizer_config(mod: nn.Module, where: str) -> dict[str, Any]:
    """JSON description of a quantizer module of lsgq-compiler: class, scalar attributes, tensor
    shapes and dtypes, child modules. Refuses what cannot be rebuilt from that."""
    cls = type(mod)
    todo = "deploy it with target='sim' from a recipe whose quantizers hold only tensors and numbers"
    if not cls.__module__.startswith("lsgq_compiler."):
        raise user_error(f"{where} {cls.__name__} is not one of lsgq-compiler's quantizers", todo)
    attrs = {}
    for k, v in vars(mod).items():
        if k in _MODULE_INTERNALS:
            continue
        if k.startswith("_") or not isinstance(v, _SCALARS):
            raise user_error(f"{where} {cls.__name__} holds {k} ({type(v).__name__}), which a checkpoint cannot store",
                             todo)
        attrs[k] = v
    tensors = {k: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
               for k, t in [*mod._parameters.items(), *mod._buffers.items()] if t is not None}
    empty = sorted(k for k, t in [*mod._parameters.items(), *mod._buffers.items()] if t is None)
    children = {k: quantizer_config(c, f"{where}.{k}") for k, c in mod._modules.items() if c is not None}
    return {"class": f"{cls.__module__}:{cls.__qualname__}", "attrs": attrs, "tensors": tensors, "empty": empty,
            "children": children}


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise user_error(f"the checkpoint names an unknown dtype {name!r}", "re-save it with save_pretrained")
    return dt


def build_quantizer(cfg: dict[str, Any], device: Any = "meta") -> nn.Module:
    """The module :func:`quantizer_config` described, with empty tensors (buffers) on ``device``.
    Only classes of lsgq-compiler are looked up."""
    modname, _, qualname = str(cfg.get("class", "")).partition(":")
    cls = None
    if modname.startswith("lsgq_compiler."):
        try:
            cls = getattr(importlib.import_module(modname), qualname, None)
        except ImportError:
            cls = None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise user_error(f"the checkpoint's quantizer class {cfg.get('class')!r} is not in this lsgq-compiler",
                         "load it with the lsgq-compiler version that saved it, or upgrade")
    mod = cls.__new__(cls)
    nn.Module.__init__(mod)
    for k, v in cfg["attrs"].items():
        setattr(mod, k, v)
    for k, t in cfg["tensors"].items():
        mod.register_buffer(k, torch.empty(t["shape"], dtype=_dtype(t["dtype"]), device=device))
    for k in cfg["empty"]:
        mod.register_buffer(k, None)
    for k, c in cfg["children"].items():
        setattr(mod, k, build_quantizer(c, device))
    return mod.eval()


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
        act = cfg.get("act") or {}
        dev = DeployLinear({**cfg, "act": None} if act.get("cls") == "stored" else cfg, device=device)
        if act.get("cls") == "stored":
            dev.aq, dev.cfg["act"] = build_quantizer(act["quantizer"], device), act
        if cfg.get("lowrank_dtype"):
            dt, r = _dtype(cfg["lowrank_dtype"]), int(cfg["rank"])
            _set_lowrank(dev, torch.empty((r, dev.in_features), dtype=dt, device=device),
                         torch.empty((dev.out_features, r), dtype=dt, device=device))
        model.set_submodule(path, dev)


def prepare(model: nn.Module, fuse_activations: bool = False, share_qkv: bool = False) -> nn.Module:
    """Build every deploy layer's kernel layout on its device (CUDA); returns ``model``.
    ``fuse_activations``: also move feed-forward GELUs into the next layer's CUDA prologue
    (:func:`~lsgq_compiler.deploy.modules.fuse_gelu`; measured slower on the H200, hence off).
    ``share_qkv``: one multi-output prologue per self-attention's q, k, v
    (:func:`~lsgq_compiler.deploy.modules.share_prologues`; measured no faster on the H200, hence off)."""
    for m in model.modules():
        if isinstance(m, DeployLinear):
            m.prepare()
    if share_qkv:
        share_prologues(model)  # after prepare: the groups read each member's kernel form
    if fuse_activations:
        fuse_gelu(model, "cuda")
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
