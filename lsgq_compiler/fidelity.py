"""A fidelity floor: raise the most sensitive layers until the model-output SQNR holds.

Given a plan (the size budget's formats, with the recipe's per-layer sensitivities) and a
``measure(plan) -> dB`` that re-applies a plan and measures the model-output SQNR on
held-back calibration batches, :func:`raise_until_floor` finds the smallest edit that
meets the floor, by measurement (never by the estimate):

1. Layers are ranked by ``spec.sensitivity`` (highest first; ties by the plan's order).
2. Phase ``8-bit``: the top ``k`` quantized layers below 8 bits go to W8A8 (W8 for
   weight-only layers). ``k`` grows geometrically (1, 2, 4, ... all) until the floor holds,
   then a bisection between the last failing and the first passing ``k`` finds the
   smallest passing ``k``.
3. Phase ``full precision``, only when every layer at 8 bits still misses the floor: the top
   ``k`` layers (of all quantized ones) go to full precision, the others staying at 8 bits,
   with the same geometric-then-bisection search.

Rounds are bounded by ``2 * (ceil(log2 n) + 1)`` measurements per phase for ``n`` layers,
and the search is deterministic (the order and the candidates depend on the plan only;
``measure`` should be deterministic too, as compiles are under ``config.seed``). Every
measured candidate is logged (``rounds``) and each raised layer is listed with its rank,
sensitivity and formats (``raised``).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from .errors import user_error
from .plan import LayerSpec, Plan


@dataclass
class FloorResult:
    """Outcome of :func:`raise_until_floor`.

    Attributes:
        plan: the chosen plan (a new object; the input plan is not modified).
        sqnr_db: its measured model-output SQNR on the held-back batches.
        met: whether ``sqnr_db >= floor_db``.
        raised: per raised layer ``{layer, rank, sensitivity, from, to}`` (most sensitive first).
        rounds: per measured candidate ``{phase, k, sqnr_db, passed}`` in the order measured.
    """

    plan: Plan
    sqnr_db: float
    met: bool
    floor_db: float
    raised: list[dict[str, Any]] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


def sensitivity_order(plan: Plan) -> list[str]:
    """Quantized layers, most sensitive first (ties keep the plan's order)."""
    q = [(i, k, s) for i, (k, s) in enumerate(plan.layers.items()) if s.quantized]
    missing = [k for _, k, s in q if s.sensitivity is None]
    if missing:
        raise user_error(f"the plan has no sensitivity for {len(missing)} layers (e.g. {missing[0]}), so there is "
                         "no ranking to raise layers by",
                         "use a recipe that measures sensitivity (e.g. --recipe lsgquant) with --min-fidelity-db")
    return [k for _, k, _ in sorted(q, key=lambda t: (-float(t[2].sensitivity), t[0]))]


def to_8bit(s: LayerSpec) -> LayerSpec:
    """The layer at 8-bit weights (and 8-bit activations when its activations are quantized)."""
    s = copy.deepcopy(s)
    if s.weight_bits is not None:
        s.weight_bits = max(s.weight_bits, 8)
    if s.act_bits is not None:
        s.act_bits = max(s.act_bits, 8)
    return s


def to_full_precision(s: LayerSpec) -> LayerSpec:
    """The layer in full precision (no quantizer, no low-rank branch, no rotation)."""
    s = copy.deepcopy(s)
    s.weight_bits = s.act_bits = None
    s.rank, s.rotate, s.smooth_alpha = 0, False, None
    return s


def _edited(base: Plan, order: list[str], k: int, raise_fn: Callable[[LayerSpec], LayerSpec],
            rest_fn: Callable[[LayerSpec], LayerSpec] | None) -> Plan:
    p = Plan.from_dict(base.to_dict())
    top = set(order[:k])
    for name in order:
        if name in top:
            p.layers[name] = raise_fn(p.layers[name])
        elif rest_fn is not None:
            p.layers[name] = rest_fn(p.layers[name])
    return p


def _search(n: int, passes: Callable[[int], bool]) -> int | None:
    """Smallest ``k`` in 1..n with ``passes(k)`` by doubling then bisection; None if ``passes(n)`` fails."""
    lo, k = 0, 1  # passes(lo) is known False (k = 0 was measured by the caller)
    while True:
        k = min(k, n)
        if passes(k):
            hi = k
            break
        lo = k
        if k == n:
            return None
        k *= 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def raise_until_floor(base: Plan, measure: Callable[[Plan], float], floor_db: float,
                      progress: Callable[[str], None] | None = None) -> FloorResult:
    """Raise the most sensitive layers of ``base`` until ``measure(plan) >= floor_db``.

    Args:
        base: the starting plan (e.g. the size budget's); must carry sensitivities.
        measure: re-applies a plan (``compile_quantized(..., plan=...)``) and returns the
            model-output SQNR in dB on held-back calibration batches.
        floor_db: the fidelity floor in dB.
        progress: called with a one-line note after each measurement (or None).

    Returns:
        a :class:`FloorResult`; ``met`` is False only when even every quantized layer in full
        precision misses the floor (then ``plan`` is that all-raised plan).
    """
    if not math.isfinite(floor_db):
        raise user_error(f"fidelity floor {floor_db} dB is not a finite number", "e.g. --min-fidelity-db 30")
    order = sensitivity_order(base)
    rounds: list[dict[str, Any]] = []
    cache: dict[tuple[str, int], tuple[Plan, float]] = {}

    def candidate(phase: str, k: int) -> tuple[Plan, float]:
        if (phase, k) not in cache:
            if phase == "base":
                p = Plan.from_dict(base.to_dict())
            elif phase == "8-bit":
                p = _edited(base, low, k, to_8bit, None)
            else:
                p = _edited(base, order, k, to_full_precision, to_8bit)
            db = float(measure(p))
            cache[(phase, k)] = (p, db)
            rounds.append({"phase": phase, "k": k, "sqnr_db": round(db, 3), "passed": db >= floor_db})
            if progress:
                progress(f"{phase} k={k}: {db:.2f} dB ({'meets' if db >= floor_db else 'below'} {floor_db:g} dB)")
        return cache[(phase, k)]

    low = [k for k in order if (base.layers[k].weight_bits or 16) < 8 or (base.layers[k].act_bits or 16) < 8]
    plan, db = candidate("base", 0)
    if db >= floor_db or not order:
        return FloorResult(plan, db, db >= floor_db, floor_db, [], rounds)
    chosen: tuple[str, int] | None = None
    if low:
        k = _search(len(low), lambda k: candidate("8-bit", k)[1] >= floor_db)
        if k is not None:
            chosen = ("8-bit", k)
    if chosen is None:
        k = _search(len(order), lambda k: candidate("full precision", k)[1] >= floor_db)
        chosen = ("full precision", k if k is not None else len(order))
    plan, db = candidate(*chosen)
    raised = []
    rank = {name: i + 1 for i, name in enumerate(order)}
    for name in order:
        a, b = base.layers[name], plan.layers[name]
        if a.fmt != b.fmt:
            raised.append({"layer": name, "rank": rank[name], "sensitivity": a.sensitivity, "from": a.fmt,
                           "to": b.fmt})
    return FloorResult(plan, db, db >= floor_db, floor_db, raised, rounds)
