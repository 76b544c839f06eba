"""QAO (LSGQuant's Quantization-Aware Optimization) with the VOLTS budgets.

Each layer with ``train_iters > 0`` trains its quantized residual weight ``W_R`` (through
the straight-through weight quantizer) and its full-precision low-rank factors jointly,
distilled to its full-precision output; ``full``-tier layers train to convergence (capped
at their budget), ``light`` ones for their few iterations, ``frozen`` ones not at all.
The bias stays frozen. Learning rates are relative to each tensor's scale (Adam steps are
scale-free). The budget is counted in iterations: each layer's VOLTS budget, and optionally
``total_iters`` for all layers together, spent most-sensitive first (layers it does not reach
record ``"skipped": "iteration budget"``). ``config.time_budget_s`` is only a safety cap: where
it fires, the layer it stopped records ``"stopped": "time cap"``, the rest ``"skipped": "time cap"``,
and ``ctx.notes["time_cap"]`` says at which layer and after how many iterations.

Under a process group of two or more ranks the layers are split across ranks and the results
broadcast (:mod:`lsgq_compiler.distributed`); the result is the one-process result. The time
cap is then each rank's own clock (a fired cap is not reproducible anyway).

The weight fake quantizer is the project's own min/max STE quantizer: torchao 0.18's
``IntxFakeQuantizer`` reproduced symmetric per-axis weights but returned wrong values for
asymmetric per-axis weights in our check, and asymmetric per-channel weights are the
paper's setting; DRAQ has no torchao counterpart at all.
"""
from __future__ import annotations

import torch
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler import distributed
from lsgq_compiler.qlinear import QuantLinear
from lsgq_compiler.train import train_layer

from .infra import PassBase, PassContext, PassResult, quant_nodes
from .train_params import cap_expired, iters_cap, note_time_cap, train_deadline


class QAO(PassBase):
    """Layer-wise distillation of every layer with a training budget.

    Args:
        lr: learning rate as a fraction of each trained tensor's mean |value|.
        total_iters: iterations for all layers together (None: every layer its own budget).
    """

    def __init__(self, ctx: PassContext, lr: float = 5e-3, total_iters: int | None = None) -> None:
        super().__init__()
        self.ctx, self.lr, self.total_iters = ctx, lr, total_iters
        # set by compile_quantized when no later pass trains layers: each layer's training target
        # (a copy of its weight) is then released as soon as the layer is done, not at the end
        self.release_targets = False

    def call(self, gm: fx.GraphModule) -> PassResult:
        todo = [m for _, m in quant_nodes(gm) if m.spec.train_iters > 0 and m.spec.quantized]
        # layers are distilled independently (each on its own full-precision inputs), so the
        # order is free: the most sensitive first, so an iteration budget (or the time cap) is spent where it matters
        todo.sort(key=lambda m: (m.spec.tier != "full", -(m.spec.sensitivity or 0.0)))
        deadline = train_deadline(self.ctx)
        caps = [iters_cap(self.ctx, m.spec.train_iters) for m in todo]
        # a layer trained to convergence may stop early and leave its iterations to the next ones:
        # the budget goes out in waves of layers whose share is known before they train, which
        # ranks split between them (one wave without a total budget; see lsgq_compiler.distributed)
        fixed = [m.spec.tier != "full" and deadline is None for m in todo]
        rank, size = distributed.world()
        if size > 1:
            distributed.check_same([[m.spec.module_path for m in todo], caps, fixed, self.total_iters],
                                   "the QAO schedule (layer order and iteration budgets)")
        left, pos = self.total_iters, 0
        skipped, out_of_iters, fired = 0, 0, None
        bar = tqdm(total=len(todo), desc="QAO (VOLTS)", disable=not self.ctx.progress, leave=False)
        with torch.enable_grad(), bar:
            while pos < len(todo):
                shares = distributed.budget_wave(caps[pos:], left, fixed[pos:])
                wave = todo[pos:pos + len(shares)]
                owner = distributed.assign_layers({m.spec.module_path: a * _tokens(m) * m.in_features * m.out_features
                                                   for m, a in zip(wave, shares)}, size)
                mine, error = {}, None
                try:
                    for m, a in zip(wave, shares):
                        if owner[m.spec.module_path] == rank:
                            mine[m.spec.module_path] = self._train(m, a, deadline)
                except Exception as e:  # noqa: BLE001 - raised on every rank just below
                    error = e
                distributed.fail_together(error, "QAO")
                results = {k: v for part in distributed.gather_objects(mine) for k, v in part.items()}
                for order, m in enumerate(wave, pos):
                    res = results[m.spec.module_path]
                    if "skipped" not in res and size > 1:  # the owner's trained tensors, to every rank
                        if (owner[m.spec.module_path] != rank and getattr(m, "fp_weight", None) is None
                                and not self.release_targets):
                            m.fp_weight = m.effective_weight().clone()  # the target it trained to
                        distributed.broadcast_tensors_(_trained(m), owner[m.spec.module_path])
                        m._wcache = None
                    if self.release_targets:
                        m.fp_weight = None
                    skipped += res.get("skipped") == "time cap"
                    out_of_iters += res.get("skipped") == "iteration budget"
                    if left is not None and "skipped" not in res:
                        left -= res["iters"]
                    if "stopped" in res:
                        fired = (m.spec.module_path, res["iters"])
                    m.spec.extra["qao"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}
                    m.spec.extra["qao"]["order"] = order
                pos += len(wave)
                bar.update(len(wave))
        if fired or skipped:
            note_time_cap(self.ctx, "qao", *(fired or (None, 0)), skipped)
        self.ctx.notes["qao"] = {"trained": len(todo) - skipped - out_of_iters, "skipped_time_budget": skipped,
                                 "skipped_iteration_budget": out_of_iters, "total_iters": self.total_iters}
        return PassResult(gm, False)

    def _train(self, m: QuantLinear, iters: int, deadline: float | None) -> dict:
        """Train one layer for ``iters`` iterations (its share); the result as ``train_layer``'s,
        or ``{"skipped": "time cap" | "iteration budget"}``."""
        if cap_expired(deadline):
            return {"skipped": "time cap"}
        if iters <= 0:
            return {"skipped": "iteration budget"}
        groups = _trained(m)
        for p in m.parameters():
            p.requires_grad_(False)
        for p in groups:
            p.requires_grad_(True)
        lrs = [self.lr * float(p.detach().abs().mean().clamp_min(1e-8)) for p in groups]
        res = train_layer(m, groups, iters, lrs, converge=m.spec.tier == "full", deadline=deadline)
        for p in m.parameters():
            p.requires_grad_(True)
        return res


def _trained(m: QuantLinear) -> list[torch.nn.Parameter]:
    """What QAO trains: ``W_R`` and, with a low-rank branch, its factors."""
    return [m.weight] + ([m.lr_down, m.lr_up] if m.lr_down is not None else [])


def _tokens(m: QuantLinear) -> int:
    """Calibration tokens a training step of ``m`` runs on (cost estimate for the split)."""
    st = m.calib_stats
    return sum(int(x.shape[0]) for x in st.samples) if st is not None and st.samples else 1
