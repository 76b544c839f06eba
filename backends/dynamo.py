"""``torch.compile(model, backend="lsgq", options={...})``: quantize the linears Dynamo captured.

Dynamo inlines modules, so each linear arrives as ``torch._C._nn.linear(x, w, b)`` with
``w``/``b`` graph placeholders; their sources (``L['self']...._modules['to_q']._parameters['weight']``)
give the module path, which keys the plan. Each quantized linear becomes a ``call_module``
to a :class:`~lsgq_compiler.qlinear.QuantLinear` (the same passes as ``compile_quantized``
then attach low-rank, rotation and quantizers), or reuses the layers of a
:class:`QuantizedModel` compiled beforehand. Then the graph is lowered (torchao int8 / DRAQ
int8 kernels where they exist, a frozen fake-quant elsewhere) and handed to inductor, or
returned as is with ``inductor=False``.

Options (``options={...}`` of ``torch.compile``):
    quantized_model: a QuantizedModel of this model (reuses its calibrated/trained layers);
    plan: a :class:`Plan`, its dict, or a JSON path; ``quant_state`` restores trained tensors;
    weight_bits / act_bits: otherwise, minmax at these bits (default 8/8) from the example
        inputs only (a warning says the calibration is weak);
    keep_fp: module-path fragments kept in full precision (default: the config's);
    inductor: hand the quantized graph to inductor (default True);
    kernels: ``"torchao"`` (default) or ``"fake"`` (fake-quant everywhere).
"""
from __future__ import annotations

import copy
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from lsgq_compiler.errors import user_error
from lsgq_compiler.plan import META_KEY, LayerSpec, Plan
from lsgq_compiler.qlinear import QuantLinear

from .common import LoweredLinear, simulated_info

OPTIONS = ("quantized_model", "plan", "quant_state", "weight_bits", "act_bits", "keep_fp", "inductor", "kernels",
           "seed")
_LINEARS = {torch._C._nn.linear, F.linear, torch.ops.aten.linear.default}
_MODULE_KEY = re.compile(r"\['_modules'\]\['([^']+)'\]|\._modules\['([^']+)'\]")


def _module_path(source_name: str) -> str | None:
    """``L['self'].__dict__['_modules']['blocks']._modules['0']..._parameters['weight']`` -> ``blocks.0...``."""
    if not source_name.endswith("._parameters['weight']"):
        return None
    parts = [a or b for a, b in _MODULE_KEY.findall(source_name)]
    return ".".join(parts) or None


def _placeholder_index(gm: fx.GraphModule) -> dict[fx.Node, int]:
    return {n: i for i, n in enumerate(n for n in gm.graph.nodes if n.op == "placeholder")}


def dynamo_linears(gm: fx.GraphModule, example_inputs: list) -> list[tuple[fx.Node, str, torch.Tensor, torch.Tensor | None]]:
    """``(node, module path, weight, bias)`` for each linear whose weight is a module parameter."""
    index = _placeholder_index(gm)
    out = []
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in _LINEARS:
            continue
        w = n.args[1] if len(n.args) > 1 else n.kwargs.get("weight")
        b = n.args[2] if len(n.args) > 2 else n.kwargs.get("bias")
        if not isinstance(w, fx.Node) or w.op != "placeholder" or "grapharg" not in w.meta:
            continue
        path = _module_path(w.meta["grapharg"].source.name)
        if path is None:
            continue
        bias = example_inputs[index[b]] if isinstance(b, fx.Node) and b.op == "placeholder" else None
        if b is not None and bias is None:
            continue  # a computed bias: leave this linear alone
        out.append((n, path, example_inputs[index[w]], bias))
    return out


def _plan_from(opt) -> Plan:
    if isinstance(opt, Plan):
        return copy.deepcopy(opt)  # passes record notes in the specs: never in the caller's plan
    if isinstance(opt, dict):
        return Plan.from_dict(opt)
    if isinstance(opt, (str, Path)):
        return Plan.load(opt)
    raise user_error(f"options['plan'] must be a Plan, a dict or a JSON path, got {type(opt).__name__}",
                     "pass qm.plan or Plan.load(path)", TypeError)


class _FrozenFakeQuant(nn.Module):
    """``aq(x) @ Qw(W)^T + b`` with ``Qw(W)`` computed once (traceable: no weight cache)."""

    def __init__(self, layer: QuantLinear) -> None:
        super().__init__()
        with torch.no_grad():
            self.register_buffer("weight", layer.quantized_weight().detach().clone())
        self.register_buffer("bias", None if layer.bias is None else layer.bias.detach().clone())
        self.aq = copy.deepcopy(layer.aq)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.aq(x) if self.aq is not None else x, self.weight, self.bias)


def _traceable(m: nn.Module) -> nn.Module:
    """A module inductor can trace: lowered layers as they are, fake-quant ones frozen."""
    if isinstance(m, LoweredLinear) or not isinstance(m, QuantLinear):
        return m
    info = getattr(m, "kernel_info", None) or simulated_info("fake-quant", "no real kernel for this format")
    return LoweredLinear(m, _FrozenFakeQuant(m), info)


def _layers_from_model(qm, found, kernels: str) -> dict[str, nn.Module]:
    if kernels == "torchao":
        from .torchao import lower_torchao

        qm = lower_torchao(qm)
    layers = qm.quant_linears()
    missing = [p for _, p, _, _ in found if p not in layers]
    if missing:
        raise user_error(f"options['quantized_model'] has no layers {missing[:3]}",
                         "pass the QuantizedModel compiled from this very model")
    return {p: layers[p] for _, p, _, _ in found if layers[p].spec.quantized}


def _layers_from_plan(gm: fx.GraphModule, found, opts: dict, example_inputs: list) -> dict[str, nn.Module]:
    """Swap QuantLinears per the plan (or minmax) into ``gm`` and run the compile passes on it."""
    from lsgq_compiler.config import QuantConfig
    from lsgq_compiler.passes.infra import PassContext, run_passes
    from lsgq_compiler.passes.insert_quantizers import InsertQuantizers
    from lsgq_compiler.passes.lowrank import LowRank
    from lsgq_compiler.passes.observe import Observe
    from lsgq_compiler.passes.rotate import Rotate
    from lsgq_compiler.passes.smooth import Smooth

    if "plan" in opts:
        plan = _plan_from(opts["plan"])
        config = QuantConfig.from_dict(plan.config) if plan.config else QuantConfig()
        specs = {p: plan.layers[p] for _, p, _, _ in found if p in plan.layers}
    else:
        wb, ab = int(opts.get("weight_bits", 8)), int(opts.get("act_bits", 8))
        keep = tuple(opts.get("keep_fp", QuantConfig().keep_fp))
        config = QuantConfig(weight_bits=wb, act_bits=ab, keep_fp=keep, seed=int(opts.get("seed", 0)))
        warnings.warn(f"lsgq backend: no plan given, quantizing minmax W{wb}A{ab} with ranges from the example "
                      "inputs only (weak calibration); pass options={'quantized_model': qm} or "
                      "{'plan': qm.plan, 'quant_state': qm.quant_state_dict()} from compile_quantized with "
                      "calibration data", stacklevel=3)
        specs = {p: LayerSpec(p, w.shape[1], w.shape[0], weight_bits=wb, act_bits=ab, weight_granularity="row",
                              weight_symmetric=False, act_granularity="token", act_symmetric=False,
                              act_quantizer="dynamic")
                 for _, p, w, _ in found if not any(f in p for f in keep)}
    layers = {p: QuantLinear(w.detach(), None if b is None else b.detach(), specs[p])
              for _, p, w, b in found if p in specs and specs[p].quantized}
    _swap(gm, found, layers)
    for n in gm.graph.nodes:
        if n.op == "call_module" and isinstance(gm.get_submodule(n.target), QuantLinear):
            n.meta[META_KEY] = gm.get_submodule(n.target).spec
    ctx = PassContext(config=config, captured=None, calib=[(tuple(example_inputs), {})], progress=False)
    need_stats = any(s.smooth_alpha is not None or s.act_quantizer in ("static", "draq_static")
                     for s in (m.spec for m in layers.values()))
    with torch.no_grad():
        run_passes(gm, ([Observe(ctx), Smooth()] if need_stats else []) + [LowRank(), Rotate(ctx), InsertQuantizers()])
    if opts.get("quant_state") is not None:
        from lsgq_compiler.api import _load_quant_state

        _load_quant_state(gm, {k: v for k, v in opts["quant_state"].items() if k.rpartition("/")[0] in layers})
    if opts.get("kernels", "torchao") == "torchao":
        from .torchao import lower_torchao_layer

        layers = {p: lower_torchao_layer(m) for p, m in layers.items()}
    return layers


def _swap(gm: fx.GraphModule, found, layers: dict[str, nn.Module]) -> None:
    """Each linear node whose path is in ``layers`` becomes ``call_module("lsgq.<path>")``."""
    for node, path, _, _ in found:
        if path not in layers or node.graph is not gm.graph:
            continue
        target = "lsgq." + path
        gm.add_submodule(target, layers[path])
        with gm.graph.inserting_before(node):
            new = gm.graph.call_module(target, (node.args[0],))
        new.meta.update(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()


def lsgq_backend(gm: fx.GraphModule, example_inputs: list, options: dict | None = None, mode: str | None = None,
                 **kwargs: Any) -> Callable:
    """The ``"lsgq"`` torch.compile backend (see the module docstring for ``options``).

    Returns inductor's compiled function, or the quantized ``gm`` itself with ``inductor=False``;
    ``gm.meta["lsgq_layers"]`` holds each quantized layer's ``kernel_info``.
    """
    opts = {**(options or {}), **kwargs}
    unknown = set(opts) - set(OPTIONS)
    if unknown:
        raise user_error(f"unknown lsgq backend options {sorted(unknown)}", f"known options: {', '.join(OPTIONS)}")
    kernels = opts.get("kernels", "torchao")
    if kernels not in ("torchao", "fake"):
        raise user_error(f"options['kernels']={kernels!r}", "use 'torchao' or 'fake'")
    found = dynamo_linears(gm, example_inputs)
    if opts.get("quantized_model") is not None:
        layers = _layers_from_model(opts["quantized_model"], found, kernels)
        _swap(gm, found, layers)
    else:
        layers = _layers_from_plan(gm, found, opts, example_inputs)
    for path, m in layers.items():
        layers[path] = _traceable(m)
        gm.set_submodule("lsgq." + path, layers[path])
    gm.meta["lsgq_layers"] = {p: dict(getattr(m, "kernel_info", {})) for p, m in layers.items()}
    if not opts.get("inductor", True):
        return gm
    from torch._inductor.compile_fx import compile_fx

    # A fresh GraphModule: Dynamo's metadata maps every parameter to a source in the user's
    # model, which the quantized layers' tensors do not have; aot_autograd then lifts them as
    # ordinary module state.
    return compile_fx(fx.GraphModule(gm, gm.graph), example_inputs)


def _register() -> None:
    """Register ``"lsgq"`` unless the entry point is being (or was) discovered: Dynamo registers
    the entry point's function itself and refuses a second registration under the same name."""
    try:
        from torch._dynamo.backends import registry
    except ImportError:  # pragma: no cover
        return
    if "lsgq" in registry._COMPILER_FNS or registry._BACKENDS.get("lsgq") is not None:
        return
    torch._dynamo.register_backend(lsgq_backend, name="lsgq")


_register()
