"""One coverage run: build a config of :mod:`diffusers_configs`, compile it, judge it on fresh inputs.

Shared by ``tests/capture_coverage/test_capture_coverage.py`` (a CI-sized subset) and
``bench/capture_coverage.py`` (every config; results JSON committed).
"""
from __future__ import annotations

import time
import warnings
from typing import Any

import torch
from torch.utils import _pytree as pytree

from diffusers_configs import CONFIGS, make_inputs, make_model
from lsgq_compiler import QuantConfig, compile_quantized

#: W8A8 MinMax must reach this on every output (issue 19)
MIN_SQNR_DB = 35.0


def sqnr_db(ref: torch.Tensor, out: torch.Tensor) -> float:
    """``10 log10(|ref|^2 / |ref - out|^2)`` over all elements."""
    ref, out = ref.double(), out.double()
    return float(10 * torch.log10(ref.pow(2).mean() / (ref - out).pow(2).mean().clamp_min(1e-30)))


def own_output(model: torch.nn.Module, inputs: dict[str, Any]) -> Any:
    """What the model returns with ``return_dict=False``: its single output, or all of them."""
    with torch.no_grad():
        out = model(**inputs, return_dict=False)
    return out[0] if isinstance(out, tuple) and len(out) == 1 else out


def same_structure(a: Any, b: Any) -> bool:
    """Same pytree structure and, leaf by leaf, same tensor shapes."""
    la, sa = pytree.tree_flatten(a)
    lb, sb = pytree.tree_flatten(b)
    if sa != sb or len(la) != len(lb):
        return False
    return all((not isinstance(x, torch.Tensor) and not isinstance(y, torch.Tensor))
               or (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor) and x.shape == y.shape)
               for x, y in zip(la, lb))


def run(name: str, recipe: str = "minmax", bits: int = 8, capture: str = "auto") -> dict[str, Any]:
    """Compile config ``name`` (calibration: the seed-0 and seed-2 inputs), run it on fresh
    seed-1 inputs; returns form, per-output SQNR (dB), structure check and timings."""
    model = make_model(name)
    x, fresh = make_inputs(name, 0), make_inputs(name, 1)
    cfg = QuantConfig(recipe=recipe, weight_bits=bits, act_bits=bits, capture=capture,
                      options={"light_iters": 5, "full_iters": 10} if recipe == "lsgquant" else {})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        qm = compile_quantized(model, x, cfg, calib_data=[x, make_inputs(name, 2)], progress=False)
    compile_s = time.perf_counter() - t0
    ref = own_output(model, fresh)
    with torch.no_grad():
        out = qm(**fresh)
    refs = [t for t in pytree.tree_leaves(ref) if isinstance(t, torch.Tensor)]
    outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
    per_output = [round(sqnr_db(r, o), 2) for r, o in zip(refs, outs)]
    cap = qm.info.get("capture", {})
    return {"config": name, "class": CONFIGS[name][0], "recipe": f"{recipe}-w{bits}a{bits}", "form": cap.get("form"),
            "outputs": cap.get("outputs"), "n_outputs": len(refs), "structure_ok": same_structure(ref, out),
            "sqnr_db": min(per_output) if per_output else None, "sqnr_db_per_output": per_output,
            "quantized_layers": len(qm.plan.quantized_layers()), "layers": len(qm.plan.layers),
            "rewrites": cap.get("rewrites", []), "graph_error": cap.get("graph_error"),
            "fallbacks": sorted({s.extra["fallback"].split(":")[0] for s in qm.plan.layers.values()
                                 if "fallback" in s.extra}),
            "n_fallback_layers": sum("fallback" in s.extra for s in qm.plan.layers.values()),
            "compile_s": round(compile_s, 2)}
