"""Calibration observers: one pass over the calibration set records every layer's input
statistics (per channel: absmax, per-call means, sums) and the full-precision outputs."""
from __future__ import annotations

from torch import fx

from lsgq_compiler.calibration import run_batches
from lsgq_compiler.qlinear import InputStats

from .infra import PassBase, PassContext, PassResult, quant_nodes


class Observe(PassBase):
    """Attach :class:`InputStats` to each QuantLinear, run the calibration batches once in
    full precision, detach the observers. Stores ``ctx.fp_outputs``.

    Must run before quantizers are attached (so statistics are of full-precision inputs).
    """

    def __init__(self, ctx: PassContext) -> None:
        super().__init__()
        self.ctx = ctx

    def call(self, gm: fx.GraphModule) -> PassResult:
        mods = [m for _, m in quant_nodes(gm)]
        saved = [(m.wq, m.aq) for m in mods]
        for m in mods:
            m.stats = InputStats(m.in_features, int(self.ctx.option("observe_tokens", 512)))
            m.wq = m.aq = None
        try:
            outs = run_batches(gm, self.ctx.calib, "calibration pass", self.ctx.progress)
        finally:
            observed = [m.stats for m in mods]
            for m, (wq, aq), st in zip(mods, saved, observed):
                m.stats = None
                m.wq, m.aq = wq, aq
                m.calib_stats = st
        if self.ctx.fp_outputs is None:
            self.ctx.fp_outputs = outs
        return PassResult(gm, False)
