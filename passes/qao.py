"""QAO (LSGQuant's Quantization-Aware Optimization) with the VOLTS budgets.

Each layer with ``train_iters > 0`` trains its quantized residual weight ``W_R`` (through
the straight-through weight quantizer) and its full-precision low-rank factors jointly,
distilled to its full-precision output; ``full``-tier layers train to convergence (capped
at their budget), ``light`` ones for their few iterations, ``frozen`` ones not at all.
The bias stays frozen. Learning rates are relative to each tensor's scale (Adam steps are
scale-free). A time budget (``config.time_budget_s``) stops training early, recorded in
the plan.

The weight fake quantizer is the project's own min/max STE quantizer: torchao 0.18's
``IntxFakeQuantizer`` reproduced symmetric per-axis weights but returned wrong values for
asymmetric per-axis weights in our check, and asymmetric per-channel weights are the
paper's setting; DRAQ has no torchao counterpart at all.
"""
from __future__ import annotations

import time

import torch
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler.train import train_layer

from .infra import PassBase, PassContext, PassResult, quant_nodes


class QAO(PassBase):
    """Layer-wise distillation of every layer with a training budget.

    Args:
        lr: learning rate as a fraction of each trained tensor's mean |value|.
    """

    def __init__(self, ctx: PassContext, lr: float = 5e-3) -> None:
        super().__init__()
        self.ctx, self.lr = ctx, lr

    def call(self, gm: fx.GraphModule) -> PassResult:
        todo = [m for _, m in quant_nodes(gm) if m.spec.train_iters > 0 and m.spec.quantized]
        # layers are distilled independently (each on its own full-precision inputs), so the
        # order is free: the most sensitive first, so a time budget is spent where it matters
        todo.sort(key=lambda m: (m.spec.tier != "full", -(m.spec.sensitivity or 0.0)))
        budget = self.ctx.config.time_budget_s
        deadline = time.perf_counter() + budget if budget else None
        skipped = 0
        with torch.enable_grad():
            for order, m in enumerate(tqdm(todo, desc="QAO (VOLTS)", disable=not self.ctx.progress, leave=False)):
                if deadline is not None and time.perf_counter() > deadline:
                    m.spec.extra["qao"] = {"skipped": "time budget", "order": order}
                    skipped += 1
                    continue
                groups = [[m.weight]] + ([[m.lr_down], [m.lr_up]] if m.lr_down is not None else [])
                for p in m.parameters():
                    p.requires_grad_(False)
                for (p,) in groups:
                    p.requires_grad_(True)
                lrs = [self.lr * float(p.detach().abs().mean().clamp_min(1e-8)) for (p,) in groups]
                res = train_layer(m, [p for (p,) in groups], m.spec.train_iters, lrs,
                                  converge=m.spec.tier == "full", deadline=deadline)
                for p in m.parameters():
                    p.requires_grad_(True)
                m.spec.extra["qao"] = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in res.items()}
                m.spec.extra["qao"]["order"] = order
        self.ctx.notes["qao"] = {"trained": len(todo) - skipped, "skipped_time_budget": skipped}
        return PassResult(gm, False)
