"""VaSMP, Q-DiT4SR's variance-aware spatial mixed precision: data-free per-layer weight bits.

Rate-distortion for uniform quantizers: a layer's distortion is ``n_l var_l 4^-b_l``
(``n_l`` its parameters, ``var_l`` the variance of what is quantized). Minimising the sum
under the budget ``sum n_l b_l = b sum n_l`` gives (*reading*, the paper's own formula was
not available):

    b_l* = b + 0.5 log2(var_l / G),    G = parameter-weighted geometric mean of var

Then greedy rounding to the allowed widths (``{b-1, b, b+1}``, within 2..8: {3, 4, 5} at
W4): start from each ``floor(b_l*)`` clipped to the set; while the parameter-weighted mean
exceeds ``b``, lower the layer with the smallest distortion increase per saved bit; then,
while the budget allows, raise the layer with the largest distortion decrease per added bit
(:func:`~lsgq_compiler.passes.bit_allocation.greedy_upgrade`, shared with BitAllocation).
``var_l`` is taken on the weight actually quantized (the residual after low-rank, block
and rotation transforms), i.e. this pass runs right before the quantizers are attached.
Activation bits are not changed (VaTMP schedules them per timestep; a one-step model has a
single segment, so the configured activation width).
"""
from __future__ import annotations

import math

from torch import fx

from .bit_allocation import greedy_upgrade
from .infra import PassBase, PassContext, PassResult, quant_nodes


def vasmp_bits(var: dict[str, float], params: dict[str, int], budget: float,
               allowed: tuple[int, ...]) -> tuple[dict[str, int], dict[str, float]]:
    """Returns ``(bits per layer, real-valued b_l*)``; ``sum(params*bits) <= budget*sum(params)``."""
    allowed = tuple(sorted(allowed))
    total = sum(params.values())
    logv = {k: math.log2(max(v, 1e-30)) for k, v in var.items()}
    log_g = sum(params[k] * logv[k] for k in var) / total
    real = {k: budget + 0.5 * (logv[k] - log_g) for k in var}

    def snap(x: float) -> int:
        below = [b for b in allowed if b <= x]
        return below[-1] if below else allowed[0]

    bits = {k: snap(r) for k, r in real.items()}
    spent = sum(params[k] * bits[k] for k in bits)

    def dist(k: str, b: int) -> float:  # per-parameter distortion at b bits
        return var[k] * 4.0 ** -b

    while spent > budget * total + 1e-9:  # clipping at the lowest width can overshoot
        cands = [(dist(k, allowed[allowed.index(b) - 1]) - dist(k, b), k) for k, b in bits.items()
                 if allowed.index(b) > 0]
        if not cands:
            break
        _, k = min(cands)
        nb = allowed[allowed.index(bits[k]) - 1]
        spent -= params[k] * (bits[k] - nb)
        bits[k] = nb
    bits = greedy_upgrade(bits, params, allowed, budget, lambda k, b, nb: (dist(k, b) - dist(k, nb)) * params[k])
    return bits, real


class VaSMP(PassBase):
    """Set ``spec.weight_bits`` of every quantized layer from its weight variance (no data).

    Args:
        spread: allowed widths are ``b - spread .. b + spread`` (within 2..8).
    """

    def __init__(self, ctx: PassContext, spread: int = 1) -> None:
        super().__init__()
        self.ctx, self.spread = ctx, spread

    def call(self, gm: fx.GraphModule) -> PassResult:
        b = self.ctx.config.weight_bits
        allowed = tuple(x for x in range(b - self.spread, b + self.spread + 1) if 2 <= x <= 8)
        mods = {m.spec.module_path: m for _, m in quant_nodes(gm) if m.spec.weight_bits is not None}
        if not mods:
            return PassResult(gm, False)
        var = {k: float(m.weight.detach().double().var()) for k, m in mods.items()}
        params = {k: m.in_features * m.out_features for k, m in mods.items()}
        bits, real = vasmp_bits(var, params, float(b), allowed)
        for k, m in mods.items():
            m.spec.weight_bits = bits[k]
            m.spec.extra["vasmp"] = {"var": float(f"{var[k]:.6g}"), "bits_real": round(real[k], 3)}
        avg = sum(params[k] * bits[k] for k in bits) / sum(params.values())
        self.ctx.notes["vasmp"] = {"allowed": list(allowed), "avg_weight_bits": round(avg, 4),
                                   "counts": {str(x): list(bits.values()).count(x) for x in allowed}}
        return PassResult(gm, False)
