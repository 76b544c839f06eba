"""RPQ, QArtSR's reversed per-module quantization calibration.

Modules (transformer blocks: the quantized layers sharing a ``...blocks.<i>.`` prefix; any
other layer is a module of its own) are calibrated one at a time from the output end back
to the input. While module ``k`` is calibrated, the modules after it are already
calibrated and quantized and the modules before it run in full precision, so the image
(model-output) loss charges module ``k`` with its error *as the quantized rest of the
network propagates it*. Per module: the module loss (each layer distilled to its own
full-precision output, :func:`~lsgq_compiler.train.train_layer`) and then the image loss
(:func:`~lsgq_compiler.train.train_end_to_end` on the module's parameters). Only
quantization parameters train (group ``bounds`` of the LBQ quantizers, see :mod:`.lbq`);
the weights stay as they are. QArtSR's extended end-to-end stage is a following
``TrainParams(ctx, "bounds", mode="end_to_end")``.

TRQ (retraining for the timestep actually used) is what calibrating on the deployed
one-step inputs does: the calibration batches carry the model's fixed timestep.
"""
from __future__ import annotations

import re
import time

import torch
from torch import fx
from tqdm.auto import tqdm

from lsgq_compiler.train import train_end_to_end, train_layer

from .infra import PassBase, PassContext, PassResult, quant_nodes
from .train_params import (group_params, iters_cap, layer_training, note_time_cap, relative_lrs,
                           restore_trainable, set_trainable, train_deadline)

_BLOCK = re.compile(r"^(.*?blocks?\.\d+)\.")


def module_of(path: str) -> str:
    """The calibration module a layer belongs to: its transformer block, else itself."""
    hit = _BLOCK.match(path)
    return hit.group(1) if hit else path


class RPQ(PassBase):
    """Reversed per-module calibration of the quantization parameters.

    Args:
        module_iters: layer-wise (module loss) iterations per layer.
        image_iters: end-to-end (image loss) iterations per module.
        lr: learning rate relative to each parameter's scale.
        groups: parameter groups trained (default: quantizer bounds only).
        max_tokens: calibration tokens per layer for the module loss.
    """

    def __init__(self, ctx: PassContext, module_iters: int = 30, image_iters: int = 2, lr: float = 1e-2,
                 groups: tuple[str, ...] = ("bounds",), max_tokens: int | None = 1024) -> None:
        super().__init__()
        self.ctx, self.module_iters, self.image_iters, self.lr, self.groups = ctx, module_iters, image_iters, lr, groups
        self.max_tokens = max_tokens

    def call(self, gm: fx.GraphModule) -> PassResult:
        if self.ctx.fp_outputs is None:
            raise RuntimeError("RPQ needs the full-precision outputs: run Observe first")
        mods = [m for _, m in quant_nodes(gm) if m.spec.quantized]
        modules: dict[str, list] = {}
        for m in mods:
            modules.setdefault(module_of(m.spec.module_path), []).append(m)
        order = list(reversed(modules))
        deadline = train_deadline(self.ctx)
        done = 0
        with torch.enable_grad():
            for step, key in enumerate(tqdm(order, desc="RPQ (reversed)", disable=not self.ctx.progress,
                                            leave=False)):
                if deadline is not None and time.perf_counter() > deadline:  # safety cap: recorded
                    note_time_cap(self.ctx, "rpq", None, 0, len(order) - step)
                    for m in (m for k in order[step:] for m in modules[k]):
                        m.spec.extra["rpq"] = {"skipped": "time cap"}
                    break
                earlier = [m for k in list(modules)[: list(modules).index(key)] for m in modules[k]]
                saved_q = [(m, m.wq, m.aq) for m in earlier]
                for m in earlier:
                    m.wq = m.aq = None
                    m._wcache = None
                try:
                    self._calibrate(gm, modules[key], deadline)
                finally:
                    for m, wq, aq in saved_q:
                        m.wq, m.aq = wq, aq
                        m._wcache = None
                for m in modules[key]:
                    m.spec.extra["rpq_step"] = step
                done += 1
        self.ctx.notes["rpq_order"] = order[:done]
        return PassResult(gm, False)

    def _calibrate(self, gm: fx.GraphModule, layers: list, deadline: float | None) -> None:
        named = [(m, group_params(m, self.groups)) for m in layers]
        named = [(m, n) for m, n in named if n]
        if not named:
            return
        for m, n in named:  # module loss
            saved = set_trainable(gm, {id(p) for _, p in n})
            try:
                with layer_training(m, self.max_tokens):
                    train_layer(m, [p for _, p in n], iters_cap(self.ctx, self.module_iters),
                                relative_lrs(m, n, self.lr), deadline=deadline)
            finally:
                restore_trainable(gm, saved)
        if iters_cap(self.ctx, self.image_iters) <= 0:
            return
        groups = [{"params": [p], "lr": r} for m, n in named for (_, p), r in zip(n, relative_lrs(m, n, self.lr))]
        saved = set_trainable(gm, {id(g["params"][0]) for g in groups})
        try:  # image loss, the rest of the network as it is now
            train_end_to_end(gm, self.ctx.calib, self.ctx.fp_outputs, groups, iters_cap(self.ctx, self.image_iters),
                             self.lr, deadline=deadline)
        finally:
            restore_trainable(gm, saved)
