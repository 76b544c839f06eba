"""Per-layer bit-widths from sensitivities under a budget.

Error model: a layer's output error scales as ``sensitivity * 4^-(b - b0)`` (one bit
halves the step), ``b0`` the bits the sensitivity was measured at. Greedy marginal
analysis: start every layer at the lowest allowed width, then repeatedly give the
upgrade with the largest error reduction per added weight bit while the parameter-
weighted average stays within ``budget`` bits. Activation bits follow weight bits.
"""
from __future__ import annotations

from typing import Callable

from torch import fx

from lsgq_compiler.errors import user_error

from .infra import PassBase, PassContext, PassResult, specs


def greedy_upgrade(bits: dict[str, int], params: dict[str, int], allowed: tuple[int, ...], budget: float,
                   reduction: Callable[[str, int, int], float]) -> dict[str, int]:
    """Greedy marginal analysis shared by :class:`BitAllocation` and VaSMP.

    Repeatedly raise the layer whose next allowed width gives the largest
    ``reduction(k, b, nb) / (params[k] * (nb - b))`` (error reduction per added weight bit)
    while ``sum(params * bits) <= budget * sum(params)``; ties go to the first layer in
    ``bits``' order (deterministic: dicts keep insertion order).

    Args:
        bits: start widths per layer (each in ``allowed``); not mutated.
        reduction: total error decrease of layer ``k`` going from ``b`` to ``nb`` bits.
    Returns:
        the widths per layer, in ``bits``' order.
    """
    allowed = tuple(sorted(allowed))
    bits = dict(bits)
    total = sum(params.values())
    spent = sum(params[k] * bits[k] for k in bits)
    while True:
        best = None
        for k, b in bits.items():
            i = allowed.index(b)
            if i + 1 == len(allowed):
                continue
            nb = allowed[i + 1]
            cost = params[k] * (nb - b)
            if spent + cost > budget * total + 1e-9:
                continue
            gain = reduction(k, b, nb) / cost
            if best is None or gain > best[0]:
                best = (gain, k, nb, cost)
        if best is None:
            return bits
        _, k, nb, cost = best
        bits[k] = nb
        spent += cost


def allocate_bits(sens: dict[str, float], params: dict[str, int], allowed: tuple[int, ...], budget: float,
                  measured_at: dict[str, int]) -> dict[str, int]:
    """Return bits per layer with ``sum(params*bits)/sum(params) <= budget``."""
    allowed = tuple(sorted(allowed))
    if budget < allowed[0]:
        raise user_error(f"bit budget {budget} is below the smallest allowed width {allowed[0]}",
                         "raise the budget or allow fewer bits")

    def err(k: str, b: int) -> float:
        return sens[k] * 4.0 ** -(b - measured_at[k])

    return greedy_upgrade({k: allowed[0] for k in sens}, params, allowed, budget,
                          lambda k, b, nb: err(k, b) - err(k, nb))


class BitAllocation(PassBase):
    """Assign ``weight_bits``/``act_bits`` per quantized layer from ``spec.sensitivity``.

    Args:
        budget: parameter-weighted average weight bits (default: ``config.weight_bits``).
        allowed: widths to pick from (default: ``config.allowed_bits``).
        uniform: ignore sensitivities (ablation): every layer gets ``config`` bits.
    """

    def __init__(self, ctx: PassContext, budget: float | None = None, allowed: tuple[int, ...] | None = None,
                 uniform: bool = False) -> None:
        super().__init__()
        self.ctx, self.budget, self.allowed, self.uniform = ctx, budget, allowed, uniform

    def call(self, gm: fx.GraphModule) -> PassResult:
        cfg = self.ctx.config
        layers = {k: s for k, s in specs(gm).items() if s.weight_bits is not None}
        if self.uniform or not layers:
            return PassResult(gm, False)
        missing = [k for k, s in layers.items() if s.sensitivity is None]
        if missing:
            raise RuntimeError(f"BitAllocation needs sensitivities (run Sensitivity first); missing for {missing[:3]}")
        budget = self.budget if self.budget is not None else float(cfg.weight_bits)
        allowed = tuple(b for b in (self.allowed or cfg.allowed_bits) if b <= max(cfg.allowed_bits))
        if budget < min(allowed):  # e.g. W3A3 with allowed (4, 6, 8): uniform at the config's bits
            return PassResult(gm, False)
        bits = allocate_bits({k: max(s.sensitivity, 0.0) for k, s in layers.items()},
                             {k: s.in_features * s.out_features for k, s in layers.items()},
                             allowed, budget, {k: s.weight_bits for k, s in layers.items()})
        for k, s in layers.items():
            s.weight_bits = bits[k]
            if s.act_bits is not None:
                s.act_bits = max(bits[k], cfg.act_bits) if cfg.act_bits > cfg.weight_bits else bits[k]
        return PassResult(gm, False)
