"""STCA, QuantVSR's spatio-temporal complexity aware rank allocation for the low-rank branch.

Per layer and per calibration clip, on the layer's input laid out as the video token grid
``X: (T, H, W, C)`` (``tokens = T H W`` in patch-grid order; a layer whose input has extra
leading tokens, e.g. text tokens concatenated before the video, uses the last ``T H W``):

    C_s = mean over (t, c) of std over (h, w) of X[t, h, w, c]          # spatial complexity
    C_t = mean over t of ||X[t+1] - X[t]||^2 / (C H W)                  # temporal complexity

Rank allocation (as QuantVSR's released code does it): percentiles ``p`` and ``1 - p``
(p = 25%) of ``C_s`` and of ``C_t`` over all (layer, clip) pairs; each layer starts at
``min_rank`` (16) and, per clip, loses ``step`` if both its complexities are at or below
the low percentiles and gains ``step`` if both are at or above the high ones; then clip to
``[min_rank, max_rank]`` ([16, 64]) and round to a multiple of 8 (``((r + 4) // 8) * 8``).

QuantVSR's base is a 50-step U-Net, so a layer sees hundreds of calls and ranks can span the
whole range; a one-step model calibrated on 8 clips moves a rank by at most 8. ``step``
(default 1, the paper's) can scale that up. Layers that do not see video tokens (cross
attention keys/values on text) keep ``min_rank``. The applied rank is capped at
``cap_frac * min(N, K)`` (default half) so that the quantized path still carries the
weight at toy widths; the allocation itself is kept in ``spec.extra["stca_rank"]``.
"""
from __future__ import annotations

import math

import torch
from torch import fx, nn

from lsgq_compiler.calibration import run_batches
from lsgq_compiler.capture import tensor_leaves

from .infra import PassBase, PassContext, PassResult, quant_nodes


def spatial_complexity(x: torch.Tensor) -> float:
    """x: ``(T, H, W, C)`` -> mean over (t, c) of the std over (h, w)."""
    t, h, w, c = x.shape
    return float(x.reshape(t, h * w, c).std(dim=1).mean())


def temporal_complexity(x: torch.Tensor) -> float:
    """x: ``(T, H, W, C)`` -> mean over t of ``||x[t+1] - x[t]||^2 / (C H W)`` (0 for one frame)."""
    if x.shape[0] < 2:
        return 0.0
    d = (x[1:] - x[:-1]).reshape(x.shape[0] - 1, -1)
    return float(d.pow(2).sum(1).div(d.shape[1]).mean())


def allocate_ranks(stats: dict[str, list[tuple[float, float]]], percentile: float = 0.25, min_rank: int = 16,
                   max_rank: int = 64, step: int = 1, multiple: int = 8) -> dict[str, int]:
    """``stats``: per layer, one ``(C_s, C_t)`` per calibration clip -> rank per layer."""
    pairs = [p for v in stats.values() for p in v]
    if not pairs:
        return {k: min_rank for k in stats}
    cs = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    ct = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    ls, us = torch.quantile(cs, percentile), torch.quantile(cs, 1 - percentile)
    lt, ut = torch.quantile(ct, percentile), torch.quantile(ct, 1 - percentile)
    ranks = {}
    for name, calls in stats.items():
        r = min_rank
        for s, t in calls:
            if s <= ls and t <= lt:
                r -= step
            elif s >= us and t >= ut:
                r += step
        r = min(max(r, min_rank), max_rank)
        ranks[name] = ((r + multiple // 2) // multiple) * multiple
    return ranks


def video_grid(ctx: PassContext, gm: fx.GraphModule) -> tuple[int, int, int] | None:
    """``(T, H, W)`` of the transformer's token grid: ``options["grid"]`` if given, else from the
    5-D video input and the patch size read off the patch-embedding convolution's kernel."""
    given = ctx.option("grid", None)
    if given is not None:
        return tuple(int(v) for v in given)
    vids = [t for _, t in tensor_leaves(ctx.captured.args, ctx.captured.kwargs) if t.dim() == 5]
    if not vids:
        return None
    shape = vids[0].shape
    for p in gm.parameters():
        if p.dim() in (4, 5) and p.shape[1] in (shape[1], shape[2]):
            c_axis = 1 if p.shape[1] == shape[1] else 2
            frames = shape[2] if c_axis == 1 else shape[1]
            kt, kh, kw = (p.shape[2], p.shape[3], p.shape[4]) if p.dim() == 5 else (1, p.shape[2], p.shape[3])
            if frames % kt == 0 and shape[3] % kh == 0 and shape[4] % kw == 0:
                return frames // kt, shape[3] // kh, shape[4] // kw
    return None


class _STCAHook:
    def __init__(self, grid: tuple[int, int, int]) -> None:
        self.grid, self.calls = grid, []

    def __call__(self, module: nn.Module, args: tuple) -> None:
        x = args[0].detach().float()
        t, h, w = self.grid
        if x.dim() != 3 or x.shape[1] < t * h * w:
            return
        for clip in x[:, -t * h * w:]:
            v = clip.reshape(t, h, w, -1)
            self.calls.append((spatial_complexity(v), temporal_complexity(v)))


class STCA(PassBase):
    """Measure ``C_s, C_t`` per quantized layer in one full-precision calibration pass and set
    ``spec.rank`` by :func:`allocate_ranks`. Before LowRank and InsertQuantizers."""

    def __init__(self, ctx: PassContext, percentile: float = 0.25, min_rank: int = 16, max_rank: int = 64,
                 step: int = 1, cap_frac: float = 0.5) -> None:
        super().__init__()
        self.ctx, self.percentile, self.min_rank, self.max_rank = ctx, percentile, min_rank, max_rank
        self.step, self.cap_frac = step, cap_frac

    def call(self, gm: fx.GraphModule) -> PassResult:
        mods = [m for _, m in quant_nodes(gm) if m.spec.weight_bits is not None]
        grid = video_grid(self.ctx, gm)
        stats: dict[str, list[tuple[float, float]]] = {}
        if grid is not None:
            hooks = {m.spec.module_path: _STCAHook(grid) for m in mods}
            handles = [m.register_forward_pre_hook(hooks[m.spec.module_path]) for m in mods]
            saved = [(m.wq, m.aq) for m in mods]
            for m in mods:
                m.wq = m.aq = None
            try:
                run_batches(gm, self.ctx.calib, "STCA statistics", self.ctx.progress)
            finally:
                for h in handles:
                    h.remove()
                for m, (wq, aq) in zip(mods, saved):
                    m.wq, m.aq = wq, aq
            stats = {k: h.calls for k, h in hooks.items() if h.calls}
        ranks = allocate_ranks(stats, self.percentile, self.min_rank, self.max_rank, self.step)
        for m in mods:
            s = m.spec
            r = ranks.get(s.module_path, self.min_rank)
            cap = max(1, math.floor(self.cap_frac * min(s.in_features, s.out_features)))
            s.rank = min(r, cap)
            calls = stats.get(s.module_path, [])
            s.extra["stca_rank"] = r
            if calls:
                s.extra["stca"] = {"c_spatial": round(sum(c[0] for c in calls) / len(calls), 6),
                                   "c_temporal": round(sum(c[1] for c in calls) / len(calls), 6)}
            s.extra["lowrank_share"] = round(s.rank * (s.in_features + s.out_features)
                                             / (s.in_features * s.out_features), 5)
        self.ctx.notes["stca"] = {"grid": list(grid) if grid else None, "layers_measured": len(stats),
                                  "ranks": sorted({ranks.get(m.spec.module_path, self.min_rank) for m in mods})}
        return PassResult(gm, False)
