"""Calibration observers: one pass over the calibration set records every layer's input
statistics (per channel: absmax, per-call means, sums) and the full-precision outputs.
With ``grads=True`` each batch also gets ``probes`` backward passes of random projections of
the output, from which each layer accumulates its gradient-weighted quantization error
(the ``output_error`` and ``fisher`` sensitivity scores).

Under a process group of two or more ranks the clips are split across ranks and the
statistics merged exactly (:mod:`lsgq_compiler.distributed`): every rank ends with what one
process records."""
from __future__ import annotations

from collections import Counter

import torch
from torch import fx, nn
from tqdm.auto import tqdm

from lsgq_compiler import distributed
from lsgq_compiler.qlinear import InputStats, QuantLinear

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
        calls = Counter(id(m) for _, m in quant_nodes(gm))  # calls per clip (a shared module: several nodes)
        mods = list({id(m): m for _, m in quant_nodes(gm)}.values())
        n = len(self.ctx.calib)
        outs = None
        if distributed.active():  # data parallel: this rank's clips, then the exact merge
            part, error = [], None
            try:
                part = self._observe(gm, mods, distributed.clip_shard(n), calls)
            except Exception as e:  # noqa: BLE001 - raised on every rank just below
                error = e
            distributed.fail_together(error, "calibration (Observe)")
            device = next(gm.parameters(), torch.empty(0)).device
            merged = distributed.merge_observed([m.calib_stats for m in mods], [calls[id(m)] for m in mods],
                                                part, n, device)
            if merged is not None:
                for m, st in zip(mods, merged[0]):
                    m.calib_stats = st
                outs = merged[1]
            # else: a layer ran more or less often than its calls per clip (module form): replicated below
        if outs is None:
            outs = self._observe(gm, mods, range(n), None)
        if self.ctx.fp_outputs is None:
            self.ctx.fp_outputs = outs
        return PassResult(gm, False)

    def _observe(self, gm: nn.Module, mods: list[QuantLinear], clips: range, calls: Counter | None
                 ) -> list[torch.Tensor]:
        """Observe ``clips`` (global indices) into each module's ``calib_stats``: plain
        :class:`InputStats`, or with ``calls`` (a rank's share) :class:`~lsgq_compiler.distributed.ShardStats`."""
        saved = [(m.wq, m.aq) for m in mods]
        kind = InputStats if calls is None else distributed.ShardStats
        for m in mods:
            m.stats = kind(m.in_features, int(self.ctx.option("observe_tokens", 512)))
            m.stats.track_grads = self.grads
            m.wq = m.aq = None
        try:
            return self._run(gm, mods, clips, calls)
        finally:
            observed = [m.stats for m in mods]
            for m, (wq, aq), st in zip(mods, saved, observed):
                m.stats = None
                m.wq, m.aq = wq, aq
                m.calib_stats = st

    def _run(self, gm: nn.Module, mods: list[QuantLinear], clips: range, calls: Counter | None
             ) -> list[torch.Tensor]:
        """Forward each clip, return the outputs; with ``grads``, then backpropagate
        ``<v, out>`` for ``probes`` ``v ~ N(0, I)`` seeded by the clip's global index.
        Parameters get no gradients."""
        params = [p for p in gm.parameters() if p.requires_grad] if self.grads else []
        for p in params:
            p.requires_grad_(False)
        desc = "calibration pass (+gradients)" if self.grads else "calibration pass"
        outs = []
        try:
            for i in tqdm(clips, desc=desc, disable=not self.ctx.progress or len(clips) < 2, leave=False):
                for m in mods if calls is not None else ():
                    m.stats.begin_clip(i * calls[id(m)])
                args, kwargs = self.ctx.calib[i]
                if not self.grads:
                    with torch.no_grad():
                        outs.append(gm(*args, **kwargs).detach())
                    continue
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
