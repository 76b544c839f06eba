"""VOLTS (LSGQuant's Variance-Oriented Layer Training Strategy): training tiers by sensitivity.

Tiers: ``frozen`` (no training), ``light`` (a few iterations; paper: 30), ``full`` (to
convergence). The paper's thresholds (0.001 and 0.075) apply to the sensitivity
normalised by its maximum; when they do not fit the model (one tier holds more than
``max_share`` of the layers, or a tier is empty) the pass falls back to percentiles
(``percentiles``), and records that it did in the plan.
"""
from __future__ import annotations

from torch import fx

from .infra import PassBase, PassContext, PassResult, specs

TIERS = ("frozen", "light", "full")


def assign_tiers(sens: dict[str, float], thresholds: tuple[float, float], percentiles: tuple[float, float],
                 max_share: float = 0.8) -> tuple[dict[str, str], str]:
    """Returns ``(tier per layer, "paper" | "percentile")``."""
    top = max(sens.values()) or 1.0
    norm = {k: v / top for k, v in sens.items()}
    tiers = {k: "frozen" if v < thresholds[0] else "light" if v < thresholds[1] else "full" for k, v in norm.items()}
    counts = [list(tiers.values()).count(t) for t in TIERS]
    if len(sens) >= 3 and (max(counts) > max_share * len(sens) or min(counts) == 0):
        order = sorted(sens, key=sens.get)
        lo, hi = int(round(percentiles[0] * len(order))), int(round(percentiles[1] * len(order)))
        tiers = {k: "frozen" if i < lo else "light" if i < hi else "full" for i, k in enumerate(order)}
        return tiers, "percentile"
    return tiers, "paper"


class VOLTS(PassBase):
    """Set ``spec.tier`` and ``spec.train_iters`` per quantized layer.

    Args:
        light_iters / full_iters: budgets (``full_iters`` is the cap of "to convergence").
        mode: ``"tiered"`` (default), ``"all_full"`` or ``"all_frozen"`` (ablations).
    """

    def __init__(self, ctx: PassContext, thresholds: tuple[float, float] = (0.001, 0.075),
                 percentiles: tuple[float, float] = (0.3, 0.8), light_iters: int = 30, full_iters: int = 300,
                 mode: str = "tiered") -> None:
        super().__init__()
        if mode not in ("tiered", "all_full", "all_frozen"):
            raise ValueError(f"unknown VOLTS mode {mode!r}")
        self.ctx, self.thresholds, self.percentiles = ctx, thresholds, percentiles
        self.light_iters, self.full_iters, self.mode = light_iters, full_iters, mode

    def call(self, gm: fx.GraphModule) -> PassResult:
        layers = {k: s for k, s in specs(gm).items() if s.quantized}
        if not layers:
            return PassResult(gm, False)
        if self.mode == "tiered":
            tiers, how = assign_tiers({k: max(s.sensitivity or 0.0, 0.0) for k, s in layers.items()},
                                      self.thresholds, self.percentiles)
        else:
            tiers, how = {k: self.mode[4:] for k in layers}, self.mode
        budget = {"frozen": 0, "light": self.light_iters, "full": self.full_iters}
        for k, s in layers.items():
            s.tier, s.train_iters = tiers[k], budget[tiers[k]]
        self.ctx.notes["volts"] = {"tiering": how, **{t: list(tiers.values()).count(t) for t in TIERS}}
        return PassResult(gm, False)
