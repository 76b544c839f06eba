"""Pass infrastructure: torch.fx's ``PassBase``/``PassResult`` plus the shared context.

A pass is one file holding one ``PassBase`` subclass: ``__call__(gm) -> PassResult``.
What a pass needs beyond the graph (config, calibration batches, the reference outputs)
comes from a :class:`PassContext` given at construction. :func:`run_passes` runs a list,
lints and recompiles after each, and names the pass that failed.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import fx
from torch.fx.passes.infra.pass_base import PassBase, PassResult

from lsgq_compiler.capture import PATH_KEY, Captured
from lsgq_compiler.config import QuantConfig
from lsgq_compiler.plan import META_KEY, LayerSpec, Plan
from lsgq_compiler.qlinear import QuantLinear

log = logging.getLogger("lsgq_compiler")

__all__ = ["PassBase", "PassResult", "PassContext", "run_passes", "specs", "quant_nodes", "is_module_form",
           "GRAPH_ONLY_PASSES"]

#: passes that rewrite graph nodes; a module-form capture skips them (and says so in the plan)
GRAPH_ONLY_PASSES: dict[str, str] = {
    "QuantizeAttention": "8-bit attention replaces SDPA graph nodes; module form keeps the model's own attention",
    "InterleaveToStack": "rewrites strided writes in the graph; nothing to rewrite without one",
}


@dataclass
class PassContext:
    """State shared by the passes of one compilation."""

    config: QuantConfig
    captured: Captured
    calib: list[tuple[tuple, dict]] = field(default_factory=list)
    plan: Plan | None = None  # a given plan overrides annotation/sensitivity/bits
    progress: bool = True
    timings: dict[str, float] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    fp_outputs: list[torch.Tensor] | None = None  # full-precision outputs on the calibration set

    def option(self, name: str, default: Any) -> Any:
        return self.config.options.get(name, default)


def is_module_form(gm: torch.nn.Module) -> bool:
    """True for a module-form capture (the eager copy, no graph): see ``lsgq_compiler.capture``."""
    return not isinstance(gm, fx.GraphModule)


def module_form_linears(gm: torch.nn.Module) -> list[tuple[str, QuantLinear]]:
    """Module form: ``(path in the user's model, QuantLinear)`` in the forward's call order."""
    root = getattr(gm, "model", gm)
    order = getattr(gm, "lsgq_order", None) or [n for n, _ in root.named_modules()]
    mods = dict(root.named_modules())
    return [(p, mods[p]) for p in order if isinstance(mods.get(p), QuantLinear)]


def specs(gm: fx.GraphModule) -> dict[str, LayerSpec]:
    """LayerSpecs of all annotated nodes, keyed by module path (graph order; call order in
    module form, where the specs live on the root until SwapLinears and on the modules after)."""
    out: dict[str, LayerSpec] = {}
    if is_module_form(gm):
        out.update(getattr(gm, "lsgq_specs", {}))
        for _, m in module_form_linears(gm):
            out[m.spec.module_path] = m.spec
        return out
    for n in gm.graph.nodes:
        s = n.meta.get(META_KEY)
        if isinstance(s, LayerSpec):
            out.setdefault(s.module_path, s)
    return out


def quant_nodes(gm: fx.GraphModule) -> list[tuple[fx.Node, QuantLinear]]:
    """``(node, module)`` for every call to a QuantLinear, in graph order. In module form
    (no graph) ``node`` is None and the order is the forward's call order."""
    if is_module_form(gm):
        return [(None, m) for _, m in module_form_linears(gm)]
    out = []
    for n in gm.graph.nodes:
        if n.op == "call_module":
            m = gm.get_submodule(n.target)
            if isinstance(m, QuantLinear):
                out.append((n, m))
    return out


def run_passes(gm: fx.GraphModule, passes: Iterable[PassBase], timings: dict[str, float] | None = None,
               peak_mem: dict[str, float] | None = None) -> fx.GraphModule:
    """Run ``passes`` in order; after each that modified the graph: lint + recompile.

    Records each pass's wall time in ``timings`` and, on CUDA, its peak GPU memory (GiB) in
    ``peak_mem``. A failing pass is named, with the passes that ran before it.
    """
    done: list[str] = []
    module_form = is_module_form(gm)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    for p in passes:
        name = type(p).__name__
        if module_form and name in GRAPH_ONLY_PASSES:
            skipped = getattr(gm, "lsgq_skipped", [])
            skipped.append(f"{name}: {GRAPH_ONLY_PASSES[name]}")
            gm.lsgq_skipped = skipped
            log.info("pass %s skipped: module form has no graph", name)
            continue
        t0 = time.perf_counter()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        try:
            res = p(gm)
        except (ValueError, TypeError):
            raise
        except Exception as e:
            raise RuntimeError(f"pass {name} failed after {done or 'no passes'}: {type(e).__name__}: {e}") from e
        if res is not None:
            gm = res.graph_module
            if res.modified and not module_form:
                gm.graph.lint()
                gm.recompile()
        if timings is not None:
            timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0
        if cuda and peak_mem is not None:
            peak_mem[name] = max(peak_mem.get(name, 0.0), torch.cuda.max_memory_allocated() / 2**30)
        log.info("pass %s: %.1f s%s", name, time.perf_counter() - t0,
                 f", peak {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB" if cuda else "")
        done.append(name)
    return gm


def path_of(node: fx.Node) -> str | None:
    return node.meta.get(PATH_KEY)
