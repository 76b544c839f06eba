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

The weight fake quantizer is the project's own min/max STE quantizer: torchao 0.18's
``IntxFakeQuantizer`` reproduced symmetric per-axis weights but returned wrong values for
asymmetric per-axis weights in our check, and asymmetric per-channel weights are the
paper's setting; DRAQ has no torchao counterpart at all.
"""
from __future__ import annotations

import torch
from torch import fx
from tqdm.auto import tqdm

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

    def call(self, gm: fx.GraphModule) -> PassResult:
        todo = [m for _, m in quant_nodes(gm) if m.spec.train_iters > 0 and m.spec.quantized]
        # layers are distilled independently (each on its own full-precision inputs), so the
        # order is free: the most sensitive first, so an iteration budget (or the time cap) is spent where it matters
        todo.sort(key=lambda m: (m.spec.tier != "full", -(m.spec.sensitivity or 0.0)))
        deadline = train_deadline(self.ctx)
        left = self.total_iters
        skipped, out_of_iters, fired = 0, 0, None
        with torch.enable_grad():
            for order, m in enumerate(tqdm(todo, desc="QAO (VOLTS)", disable=not self.ctx.progress, leave=False)):
                iters = iters_cap(self.ctx, m.spec.train_iters if left is None else min(m.spec.train_iters, left))
                if cap_expired(deadline):
                    m.spec.extra["qao"] = {"skipped": "time cap", "order": order}
                    skipped += 1
                    continue
                if iters <= 0:
                    m.spec.extra["qao"] = {"skipped": "iteration budget", "order": order}
                    out_of_iters += 1
                    continue
                groups = [[m.weight]] + ([[m.lr_down], [m.lr_up]] if m.lr_down is not None else [])
                for p in m.parameters():
                    p.requires_grad_(False)
                for (p,) in groups:
                    p.requires_grad_(True)
                lrs = [self.lr * float(p.detach().abs().mean().clamp_min(1e-8)) for (p,) in groups]
                res = train_layer(m, [p for (p,) in groups], iters, lrs,
                                  converge=m.spec.tier == "full", deadline=deadline)
                for p in m.parameters():
                    p.requires_grad_(True)
                if left is not None:
                    left -= res["iters"]
                if "stopped" in res:
                    fired = (m.spec.module_path, res["iters"])
                m.spec.extra["qao"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}
                m.spec.extra["qao"]["order"] = order
        if fired or skipped:
            note_time_cap(self.ctx, "qao", *(fired or (None, 0)), skipped)
        self.ctx.notes["qao"] = {"trained": len(todo) - skipped - out_of_iters, "skipped_time_budget": skipped,
                                 "skipped_iteration_budget": out_of_iters, "total_iters": self.total_iters}
        return PassResult(gm, False)
