"""A training stage for named parameter groups, on the shared trainer (:mod:`lsgq_compiler.train`).

The seed methods differ in *which* parameters they train and *against what*, not in how:
QuantVSR refines the low-rank branch and then only its bias alignment, PassionSR trains
its equivalent transformation and then its quantizer bounds, QArtSR only quantization
parameters. :class:`TrainParams` is that one stage, parameterised by group:

==========  ======================================================  =====================
group       parameters of each QuantLinear                          added by
==========  ======================================================  =====================
weight      ``weight`` (the quantized residual ``W_R``)              SwapLinears
lowrank     ``lr_down``, ``lr_up``                                   LowRank
lba         ``lba`` (learnable bias alignment)                       :mod:`.lba`
let         ``let_scale``, ``let_shift`` (equivalent transformation)  :mod:`.lbq`
bounds      ``lo``, ``hi``, ``clip_lo``, ``clip_hi`` of the quantizers  :mod:`.lbq`
hsvd        ``blk_u``, ``blk_v`` (block-wise rank-1 branch)           :mod:`.hsvd`
==========  ======================================================  =====================

Modes: ``layer`` distils each layer to its full-precision output on the calibration tokens
(:func:`~lsgq_compiler.train.train_layer`); ``end_to_end`` distils the whole model to its
full-precision outputs (:func:`~lsgq_compiler.train.train_end_to_end`). Learning rates are
relative to each tensor's mean magnitude (Adam steps are scale-free); tensors that start
at zero (``lba``, ``let_shift``) take the scale of the layer's output or input instead.
"""
from __future__ import annotations

import contextlib
import copy
import time
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import fx, nn
from tqdm.auto import tqdm

from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.train import train_end_to_end, train_layer

from .infra import PassBase, PassContext, PassResult, quant_nodes

GROUPS: dict[str, tuple[str, ...]] = {
    "weight": ("weight",),
    "lowrank": ("lr_down", "lr_up"),
    "lba": ("lba",),
    "let": ("let_scale", "let_shift"),
    "bounds": ("lo", "hi", "clip_lo", "clip_hi"),
    "hsvd": ("blk_u", "blk_v"),
}


def train_deadline(ctx: PassContext) -> float | None:
    """One safety-cap deadline for all training stages of a compilation (``config.time_budget_s``).

    Budgets that decide results are iterations; this wall-clock cap only guards against a
    run that would take too long. Where it fires, the stage records it per layer
    (``spec.extra[stage]["stopped" | "skipped"] = "time cap"``) and in ``ctx.notes["time_cap"]``
    (see :func:`note_time_cap`). Kept off ``ctx.notes``: the deadline is a clock value.
    """
    budget = ctx.config.time_budget_s
    if not budget:
        return None
    if getattr(ctx, "_train_deadline", None) is None:
        ctx._train_deadline = time.perf_counter() + budget
    return ctx._train_deadline


def cap_expired(deadline: float | None) -> bool:
    """Whether the safety cap of :func:`train_deadline` has fired."""
    return deadline is not None and time.perf_counter() > deadline


def note_time_cap(ctx: PassContext, stage: str, layer: str | None, iters: int, skipped: int) -> None:
    """Record where the time cap fired: ``stage``, the layer it stopped (None: end-to-end or
    between layers), after how many of that layer's iterations, and how many layers it skipped."""
    ctx.notes.setdefault("time_cap", {"time_budget_s": ctx.config.time_budget_s, "stages": []})
    ctx.notes["time_cap"]["stages"].append({"stage": stage, "layer": layer, "iters": iters, "skipped": skipped})


def iters_cap(ctx: PassContext, iters: int) -> int:
    """``iters`` capped by ``config.options["train_iters"]`` (``lsgq compare --iters``: the same
    per-layer iteration cap for every training stage of every method; absent: no cap)."""
    cap = ctx.config.options.get("train_iters")
    return int(iters) if cap is None else min(int(iters), int(cap))


def group_params(m: QuantLinear, groups: Iterable[str]) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of ``m`` in the named groups (see the module table)."""
    leaves = set()
    for g in groups:
        if g not in GROUPS:
            raise ValueError(f"unknown parameter group {g!r}; use some of {sorted(GROUPS)}")
        leaves.update(GROUPS[g])
    return [(n, p) for n, p in m.named_parameters() if n.rsplit(".", 1)[-1] in leaves]


@torch.no_grad()
def _ref_scale(name: str, p: torch.Tensor, m: QuantLinear) -> float:
    mag = float(p.abs().mean())
    if mag > 1e-8:
        return mag
    st = m.calib_stats
    if st is None or not st.samples:
        return 1.0
    x = st.samples[0]
    if name.endswith("lba"):
        return float(F.linear(x, m.effective_weight().float()).std().clamp_min(1e-8))
    if m.smooth is not None:
        x = x / m.smooth.float()
    return float(x.abs().mean().clamp_min(1e-8))


def relative_lrs(m: QuantLinear, named: list[tuple[str, nn.Parameter]], lr: float) -> list[float]:
    return [lr * _ref_scale(n, p, m) for n, p in named]


def set_trainable(gm: nn.Module, trainable: set[int]) -> list[tuple[nn.Parameter, bool]]:
    """Freeze all but ``trainable`` (ids). A QuantLinear with anything to train keeps
    ``weight.requires_grad`` (never stepped): ``quantized_weight`` then recomputes ``Qw(W_R)``
    instead of serving its cache, so gradients reach learnable quantizers. Returns the old flags."""
    saved = [(p, p.requires_grad) for p in gm.parameters()]
    for p, _ in saved:
        p.requires_grad_(id(p) in trainable)
    for m in gm.modules():
        if isinstance(m, QuantLinear) and any(id(p) in trainable for p in m.parameters()):
            m.weight.requires_grad_(True)
    return saved


@contextlib.contextmanager
def fp_reference(m: QuantLinear) -> Iterator[None]:
    """Layer-wise targets from the layer's *original* full-precision weight.

    :func:`~lsgq_compiler.train.train_layer` distils to ``X effective_weight()^T + b``, and
    ``effective_weight()`` moves once a stage has trained ``W_R`` or the low-rank factors
    (``W_R + L_up L_down`` no longer equals ``W``). A later stage (QuantVSR's LBA after its
    branch refinement) must still aim at the original layer, so the first training stage
    records it and every stage reads it while it trains.
    """
    ref = m.__dict__.setdefault("_fp_reference", m.effective_weight().detach().clone())
    m.effective_weight = lambda: ref  # instance attribute shadows the method while training
    try:
        yield
    finally:
        del m.effective_weight


@contextlib.contextmanager
def token_subset(m: QuantLinear, max_tokens: int | None) -> Iterator[None]:
    """Train on at most ``max_tokens`` of the sampled calibration tokens, evenly spaced in
    each clip (every frame is represented), as one batch: a layer-wise step then costs one
    O(tokens N K) product and one weight fake-quantization, instead of one per clip. (A
    per-tensor dynamic activation range is then taken over the batch, not per clip.)"""
    st = m.calib_stats
    if not max_tokens or st is None or not st.samples:
        yield
        return
    per = max(1, max_tokens // len(st.samples))
    view = copy.copy(st)
    view.samples = [torch.cat([x[torch.linspace(0, x.shape[0] - 1, min(per, x.shape[0])).round().long()]
                               for x in st.samples])]
    m.calib_stats = view
    try:
        yield
    finally:
        m.calib_stats = st


@contextlib.contextmanager
def layer_training(m: QuantLinear, max_tokens: int | None) -> Iterator[None]:
    with fp_reference(m), token_subset(m, max_tokens):
        yield


def restore_trainable(gm: nn.Module, saved: list[tuple[nn.Parameter, bool]]) -> None:
    for p, flag in saved:
        p.requires_grad_(flag)
        p.grad = None
    for m in gm.modules():
        if isinstance(m, QuantLinear):
            m._wcache = None


class TrainParams(PassBase):
    """Train only the parameters in ``groups`` of every quantized layer.

    Args:
        groups: names from :data:`GROUPS`, e.g. ``("lowrank",)``.
        iters: iterations per layer (``layer``) or in all (``end_to_end``); 0 skips.
        lr: learning rate relative to each tensor's scale.
        mode: ``"layer"`` or ``"end_to_end"``.
        converge: layer mode: stop a layer early once its loss stalls.
        max_tokens: layer mode: calibration tokens per layer used for training (None: all
            that Observe sampled, 512 per clip).
        stage: name recorded in ``spec.extra`` and ``ctx.notes`` (default: the groups).
    """

    def __init__(self, ctx: PassContext, groups: tuple[str, ...] | str, iters: int, lr: float = 5e-3,
                 mode: str = "layer", converge: bool = False, stage: str | None = None,
                 max_tokens: int | None = 1024) -> None:
        super().__init__()
        if mode not in ("layer", "end_to_end"):
            raise ValueError(f"unknown training mode {mode!r}; use 'layer' or 'end_to_end'")
        self.ctx, self.groups = ctx, (groups,) if isinstance(groups, str) else tuple(groups)
        unknown = [g for g in self.groups if g not in GROUPS]
        if unknown:
            raise ValueError(f"unknown parameter groups {unknown}; use some of {sorted(GROUPS)}")
        self.iters, self.lr, self.mode, self.converge, self.max_tokens = int(iters), lr, mode, converge, max_tokens
        self.stage = stage or "+".join(self.groups)

    def call(self, gm: fx.GraphModule) -> PassResult:
        mods = [m for _, m in quant_nodes(gm) if m.spec.quantized]
        todo = [(m, group_params(m, self.groups)) for m in mods]
        todo = [(m, named) for m, named in todo if named]
        iters = iters_cap(self.ctx, self.iters)
        note = {"mode": self.mode, "layers": len(todo), "iters": iters}
        if iters <= 0 or not todo:
            self.ctx.notes[f"train:{self.stage}"] = {**note, "skipped": "no iterations or parameters"}
            return PassResult(gm, False)
        deadline = train_deadline(self.ctx)
        with torch.enable_grad():
            if self.mode == "layer":
                note.update(self._layerwise(gm, todo, deadline, iters))
            else:
                note.update(self._end_to_end(gm, todo, deadline, iters))
        self.ctx.notes[f"train:{self.stage}"] = note
        return PassResult(gm, False)

    def _layerwise(self, gm, todo, deadline, iters) -> dict:
        key, skipped, fired = f"train:{self.stage}", 0, None
        for m, named in tqdm(todo, desc=f"train {self.stage}", disable=not self.ctx.progress, leave=False):
            if cap_expired(deadline):
                m.spec.extra[key] = {"skipped": "time cap"}
                skipped += 1
                continue
            saved = set_trainable(gm, {id(p) for _, p in named})
            try:
                with layer_training(m, self.max_tokens):
                    res = train_layer(m, [p for _, p in named], iters, relative_lrs(m, named, self.lr),
                                      converge=self.converge, deadline=deadline)
            finally:
                restore_trainable(gm, saved)
            m.spec.extra[key] = {k: round(v, 6) if isinstance(v, float) else v for k, v in res.items()}
            if "stopped" in res:
                fired = (m.spec.module_path, res["iters"])
        if fired or skipped:
            note_time_cap(self.ctx, key, *(fired or (None, 0)), skipped)
        return {"skipped_time_budget": skipped}

    def _end_to_end(self, gm, todo, deadline, iters) -> dict:
        if self.ctx.fp_outputs is None:
            raise RuntimeError("end-to-end training needs the full-precision outputs: run Observe first")
        groups = [{"params": [p], "lr": r} for m, named in todo
                  for (_, p), r in zip(named, relative_lrs(m, named, self.lr))]
        saved = set_trainable(gm, {id(g["params"][0]) for g in groups})
        try:
            res = train_end_to_end(gm, self.ctx.calib, self.ctx.fp_outputs, groups, iters, self.lr,
                                   deadline=deadline)
        finally:
            restore_trainable(gm, saved)
        if "stopped" in res:
            note_time_cap(self.ctx, f"train:{self.stage}", None, res["iters"], 0)
            for m, _ in todo:
                m.spec.extra[f"train:{self.stage}"] = {"iters": res["iters"], "stopped": "time cap"}
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in res.items()}
