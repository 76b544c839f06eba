"""The one trainer every recipe's training stage uses: distil quantized layers (or the
whole model) to full-precision outputs with straight-through gradients.

Layer-wise: the targets are the layer's own full-precision outputs on the calibration
tokens sampled by Observe (``InputStats.samples``). End-to-end: the model's
full-precision outputs on the calibration batches.
"""
from __future__ import annotations

import time
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from .qlinear import QuantLinear

#: passes that train layers with :func:`train_layer`; a layer's training target (``fp_weight``,
#: fixed at its first training stage) must outlive all of them
LAYER_TRAINING_PASSES = ("QAO", "RPQ", "TrainParams")


def _rel_mse(y: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return (y - t).pow(2).mean() / t.pow(2).mean().clamp_min(1e-12)


def layer_loss(m: QuantLinear, xs: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
    """Mean relative MSE of ``m`` against its full-precision outputs over the sample groups."""
    return sum(_rel_mse(m(x), t) for x, t in zip(xs, targets)) / len(xs)


def train_layer(m: QuantLinear, params: Iterable[nn.Parameter], iters: int, lr: float | list[float],
                converge: bool = False, patience: int = 25, deadline: float | None = None) -> dict:
    """Train ``params`` of ``m`` to match ``X W^T + b`` (W the layer's full-precision weight).

    Args:
        lr: one learning rate, or one per parameter.
        iters: iteration budget (the cap when ``converge``).
        converge: stop early when the loss has not improved by 0.1% for ``patience`` iterations.
        deadline: safety cap (``config.time_budget_s``): ``time.perf_counter()`` value after which
            training stops; the result then says ``"stopped": "time cap"``.
    Returns:
        ``{"loss_before", "loss_after", "iters"}`` (relative MSE; loss_after of the kept state),
        plus ``"stopped": "time cap"`` when the deadline cut training short.
    """
    st = m.calib_stats
    if st is None or not st.samples:
        raise RuntimeError(f"{m.spec.module_path}: layer training needs calibration samples (run Observe)")
    params = [p for p in params if p is not None]
    with torch.no_grad():
        # the target is the layer's original weight, fixed at its first training stage, so later
        # stages (e.g. a bias stage after a low-rank stage) do not chase an already-trained layer
        if getattr(m, "fp_weight", None) is None:  # in the weight's dtype: the targets below use that dtype
            m.fp_weight = m.effective_weight().clone()
        w_fp = m.fp_weight
        xs = [x.to(device=m.weight.device, dtype=m.weight.dtype) for x in st.samples]
        if len({x.shape for x in xs}) == 1:  # one (calls, tokens, K) batch: per-call quantizer semantics kept
            xs = [torch.stack(xs)]
        targets = [F.linear(x, w_fp.to(x.dtype), m.bias) for x in xs]
        before = float(layer_loss(m, xs, targets))
    best, best_state, stale, it, capped = before, [p.detach().clone() for p in params], 0, 0, False
    lrs = lr if isinstance(lr, list) else [lr] * len(params)
    opt = torch.optim.Adam([{"params": [p], "lr": r} for p, r in zip(params, lrs)])
    for it in range(1, iters + 1):
        opt.zero_grad(set_to_none=True)
        loss = layer_loss(m, xs, targets)
        loss.backward()
        opt.step()
        cur = float(loss.detach())
        if cur < best * (1 - 1e-3):
            best, stale = cur, 0
            best_state = [p.detach().clone() for p in params]
        else:
            stale += 1
        if converge and stale >= patience:
            break
        if deadline is not None and it < iters and time.perf_counter() > deadline:
            capped = True
            break
    with torch.no_grad():
        for p, b in zip(params, best_state):
            p.copy_(b)
            p.grad = None  # the last step's gradient: a weight-sized tensor per trained layer
        m._wcache = None
        after = float(layer_loss(m, xs, targets))
    return {"loss_before": before, "loss_after": after, "iters": it, **({"stopped": "time cap"} if capped else {})}


def train_end_to_end(model: nn.Module, batches: list[tuple[tuple, dict]], fp_outputs: list[torch.Tensor],
                     params: list[nn.Parameter], iters: int, lr: float, deadline: float | None = None) -> dict:
    """Distil the whole quantized model to the full-precision outputs (relative MSE).

    ``deadline``: safety cap as in :func:`train_layer` (result ``"stopped": "time cap"`` when it fired)."""
    if iters <= 0 or not params:
        return {"iters": 0}
    opt = torch.optim.Adam(params, lr=lr)
    losses, capped = [], False
    for it in range(iters):
        args, kwargs = batches[it % len(batches)]
        opt.zero_grad(set_to_none=True)
        loss = _rel_mse(model(*args, **kwargs), fp_outputs[it % len(batches)])
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if deadline is not None and it + 1 < iters and time.perf_counter() > deadline:
            capped = True
            break
    for group in params:  # parameters or optimizer parameter groups
        for p in (group["params"] if isinstance(group, dict) else [group]):
            p.grad = None
    for m in model.modules():
        if isinstance(m, QuantLinear):
            m._wcache = None
    return {"iters": len(losses), "loss_first": losses[0], "loss_last": losses[-1],
            **({"stopped": "time cap"} if capped else {})}
