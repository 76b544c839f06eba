"""Recipes: each an ordered list of shared passes with the paper's defaults.

``RECIPES[name].build(ctx)`` returns the passes; ``lsgq recipes`` lists them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

RECIPES: dict[str, "Recipe"] = {}


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    paper: str
    build: Callable  # (PassContext) -> list[PassBase]
    doc: str = ""


def register_recipe(name: str, summary: str, paper: str) -> Callable:
    """Decorator: register ``build(ctx) -> list[pass]`` under ``name``; its docstring is the recipe's doc."""
    def deco(fn: Callable) -> Callable:
        RECIPES[name] = Recipe(name, summary, paper, fn, (fn.__doc__ or "").strip())
        return fn
    return deco


@register_recipe("minmax", "round-to-nearest: per-channel weights, per-token dynamic activations",
                 "baseline (RTN / MinMax)")
def _minmax(ctx):
    """Round-to-nearest baseline. Weights: static asymmetric min/max per output channel.
    Activations: dynamic asymmetric min/max per token, recomputed every call."""
    from lsgq_compiler.passes.annotate_linears import AnnotateLinears
    from lsgq_compiler.passes.insert_quantizers import InsertQuantizers
    from lsgq_compiler.passes.swap_linears import SwapLinears

    return [AnnotateLinears(ctx, weight_granularity="row", weight_symmetric=False,
                            act_granularity="token", act_symmetric=False, act_quantizer="dynamic"),
            SwapLinears(), InsertQuantizers()]
