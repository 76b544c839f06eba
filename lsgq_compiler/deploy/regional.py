"""Regional compilation: ``torch.compile`` of a transformer's repeated blocks, one at a time.

Compiling a whole deployed CogVideoX1.5-5B with ``torch.compile(model)`` traces all 42 blocks
into one graph (over 4 minutes on the H200); the blocks are the same code with different
weights, so compiling each block module in place (``nn.Module.compile``) traces one block once
and reuses the graph for the rest (parameters and buffers are graph inputs: dynamo's
``inline_inbuilt_nn_modules``). The speed is that of the whole-model compile up to the glue
between blocks (patch embedding, time embedding, output norm), which stays eager. diffusers'
``ModelMixin.compile_repeated_blocks`` does the same for models that declare
``_repeated_blocks``; CogVideoX's transformer does not, so the blocks are found here from the
model's structure.
"""
from __future__ import annotations

from typing import Any

from torch import nn

# a deploy layer's kernel choice is a guarded Python attribute: blocks whose layers differ in
# format (sensitivity-driven bits) compile one graph per distinct block configuration
RECOMPILE_LIMIT = 64


def repeated_blocks(model: nn.Module) -> list[nn.Module]:
    """The modules to compile: those whose class is named in ``model._repeated_blocks`` (diffusers),
    else the members of the model's largest ``nn.ModuleList`` of two or more modules of one class
    (``transformer_blocks`` / ``blocks``). Empty when neither exists."""
    names = set(getattr(model, "_repeated_blocks", None) or ())
    if names:
        return [m for m in model.modules() if type(m).__name__ in names]
    best: list[nn.Module] = []
    for m in model.modules():
        if isinstance(m, nn.ModuleList) and len(m) >= 2 and len({type(c) for c in m}) == 1 and len(m) > len(best):
            best = list(m)
    return best


def compile_repeated_blocks(model: nn.Module, **compile_kwargs: Any) -> int:
    """Compile ``model``'s repeated blocks in place (``block.compile(**compile_kwargs)``); the rest of
    the model stays eager. Raises dynamo's recompile limit to :data:`RECOMPILE_LIMIT` (blocks with
    different layer formats compile separately).

    Returns the number of blocks compiled; 0 (nothing changed) when the model has no repeated blocks,
    in which case compile the whole model instead.
    """
    import torch._dynamo

    blocks = repeated_blocks(model)
    if not blocks:
        return 0
    cfg = torch._dynamo.config
    if hasattr(cfg, "recompile_limit"):
        cfg.recompile_limit = max(cfg.recompile_limit, RECOMPILE_LIMIT)
    else:  # older torch
        cfg.cache_size_limit = max(cfg.cache_size_limit, RECOMPILE_LIMIT)
    for b in blocks:
        b.compile(**compile_kwargs)
    return len(blocks)
