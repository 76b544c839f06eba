"""Calibration observers: one pass over the calibration set records every layer's input
statistics (per channel: absmax, per-call means, sums) and the full-precision outputs.
With ``grads=True`` each batch also gets ``probes`` backward passes of random projections of
the output, from which each layer accumulates its gradient-weighted quantization error
(the ``output_error`` and ``fisher`` sensitivity scores)."""
from __future__ import annotations

import torch
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler.calibration import run_batches
from lsgq_compiler.qlinear import InputStats

from .infra import PassBase, PassContext, PassResult, quant_nodes


class Observe(PassBase):
    """Attach :class:`InputStats` to each QuantLinear, run the calibration batches once in
    full precision, detach the observers. Stores ``ctx.fp_outputs``.

    Must run before quantizers are attached (so statistics are of full-precision inputs).
    """

    def __init__(self, ctx: PassContext, grads: bool = False, probes: int = 4) -> None:
        super().__init__()
        self.ctx, self.grads, self.probes = ctx, grads, probes

    def call(self, gm: fx.GraphModule) -> PassResult:
        mods = [m for _, m in quant_nodes(gm)]
        saved = [(m.wq, m.aq) for m in mods]
        for m in mods:
            m.stats = InputStats(m.in_features, int(self.ctx.option("observe_tokens", 512)))
            m.stats.track_grads = self.grads
            m.wq = m.aq = None
        try:
            outs = self._run_with_grads(gm) if self.grads else \
                run_batches(gm, self.ctx.calib, "calibration pass", self.ctx.progress)
        finally:
            observed = [m.stats for m in mods]
            for m, (wq, aq), st in zip(mods, saved, observed):
                m.stats = None
                m.wq, m.aq = wq, aq
                m.calib_stats = st
        if self.ctx.fp_outputs is None:
            self.ctx.fp_outputs = outs
        return PassResult(gm, False)

    def _run_with_grads(self, gm: fx.GraphModule) -> list[torch.Tensor]:
        """Forward each batch, then backpropagate ``<v, out>`` for ``probes`` seeded
        ``v ~ N(0, I)``. Parameters get no gradients."""
        params = [p for p in gm.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        outs = []
        try:
            for i, (args, kwargs) in enumerate(tqdm(self.ctx.calib, desc="calibration pass (+gradients)",
                                                    disable=not self.ctx.progress, leave=False)):
                with torch.enable_grad():
                    out = gm(*args, **kwargs)
                    g = torch.Generator(device="cpu").manual_seed(1000 + i)
                    for k in range(self.probes if out.requires_grad else 0):
                        v = torch.randn(out.shape, generator=g).to(device=out.device, dtype=torch.float32)
                        (out.float() * v).sum().backward(retain_graph=k < self.probes - 1)
                outs.append(out.detach())
        finally:
            for p in params:
                p.requires_grad_(True)
        return outs
