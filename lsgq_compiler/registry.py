"""The recipe registry: a plain dict filled by ``@register_recipe`` in :mod:`.recipes` (LSGQuant and
the baseline) and :mod:`.recipe_zoo` (the peer methods). Both import this module; neither imports
the other, and ``import lsgq_compiler`` loads both."""
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
