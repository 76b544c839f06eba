"""Full-precision low-rank branch: ``W_s = L_up L_down + W_R`` by truncated SVD.

The default rank keeps the branch's parameter share near the paper's (LSGQuant: rank 32
at width 3072 is about 2% of a layer): ``r = max(1, round(share * N K / (N + K)))``.
"""
from __future__ import annotations

from torch import fx

from .infra import PassBase, PassContext, PassResult, quant_nodes, specs


def rank_for_share(n: int, k: int, share: float) -> int:
    """Rank whose factors ``(N + K) r`` hold ``share`` of the ``N K`` weight parameters (>= 1)."""
    return max(1, round(share * n * k / (n + k)))


class AssignRanks(PassBase):
    """Set ``spec.rank`` of quantized layers: a fixed ``rank`` or one from ``share``."""

    def __init__(self, rank: int | None = None, share: float = 0.02, multiple: int = 1) -> None:
        super().__init__()
        self.rank, self.share, self.multiple = rank, share, multiple

    def call(self, gm: fx.GraphModule) -> PassResult:
        for s in specs(gm).values():
            if s.weight_bits is None:
                continue
            r = self.rank if self.rank is not None else rank_for_share(s.out_features, s.in_features, self.share)
            if self.multiple > 1:
                r = max(self.multiple, round(r / self.multiple) * self.multiple)
            s.rank = min(r, min(s.in_features, s.out_features))
            s.extra["lowrank_share"] = round(s.rank * (s.in_features + s.out_features)
                                             / (s.in_features * s.out_features), 5)
        return PassResult(gm, False)


class LowRank(PassBase):
    """Apply the SVD split to every QuantLinear whose spec has ``rank > 0``. Before rotation."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            if m.spec.rank > 0 and m.lr_down is None:
                m.apply_lowrank(m.spec.rank)
        return PassResult(gm, False)


def lowrank_share(gm: fx.GraphModule) -> float:
    """Parameters in low-rank branches over parameters of quantized layers."""
    lr = tot = 0
    for _, m in quant_nodes(gm):
        if m.spec.weight_bits is None:
            continue
        tot += m.in_features * m.out_features
        if m.lr_down is not None:
            lr += m.lr_down.numel() + m.lr_up.numel()
    return lr / max(tot, 1)
