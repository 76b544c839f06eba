"""Per-group quantization (SVDQuant's INT4 format: groups of 64 along the input dimension,
for the residual weight and for the activations).

A group must divide ``in_features``: each layer gets the largest divisor of its
``in_features`` that is at most the requested size (64 at widths 3072 or 384; 32 at
width 32), recorded in ``spec.group_size``. Activation groups are dynamic: each token's
``K / G`` groups get their own symmetric scale, computed every call.
"""
from __future__ import annotations

import torch
from torch import fx

from lsgq_compiler.quant import quantize_dequantize
from lsgq_compiler.quantizers import ActQuant, WeightQuant

from .infra import PassBase, PassResult, quant_nodes


def group_size_for(k: int, requested: int) -> int:
    """Largest divisor of ``k`` that is ``<= requested``."""
    return max(g for g in range(1, min(k, requested) + 1) if k % g == 0)


class GroupActQuant(ActQuant):
    """Dynamic per-token, per-group activation fake quantizer. X: ``(..., K)``, ``K % G == 0``."""

    def __init__(self, bits: int, group_size: int, symmetric: bool = True) -> None:
        super().__init__(bits, "dynamic", "group", symmetric)
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return quantize_dequantize(x, self.bits, self.symmetric, "group", self.group_size)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


class GroupSize(PassBase):
    """Switch weight (and, with ``acts``, activation) quantizers of quantized layers to groups.

    Runs after InsertQuantizers (it re-attaches the quantizers it changes).

    Args:
        group_size: requested group size (64 in SVDQuant).
        acts: also quantize activations per group (SVDQuant's W4A4 kernels do).
    """

    def __init__(self, group_size: int = 64, acts: bool = True) -> None:
        super().__init__()
        self.group_size, self.acts = group_size, acts

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            s = m.spec
            if not s.quantized:
                continue
            g = group_size_for(s.in_features, self.group_size)
            s.group_size = g
            if g != self.group_size:  # per-layer fallback, recorded in the plan
                s.extra["group_fallback"] = (f"group {g}: largest divisor of in_features={s.in_features} "
                                             f"<= the requested {self.group_size}")
            if s.weight_bits:
                s.weight_granularity = "group"
                m.wq = WeightQuant(s.weight_bits, "group", s.weight_symmetric, g)
            if s.act_bits and self.acts:
                s.act_granularity, s.act_quantizer = "group", "dynamic"
                m.aq = GroupActQuant(s.act_bits, g, s.act_symmetric)
            m._wcache = None
        return PassResult(gm, False)
