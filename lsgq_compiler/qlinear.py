"""`QuantLinear`: the one quantized-linear form every recipe configures.

Shape notation: ``X: (..., K)`` input, ``W: (N, K)`` weight, ``r`` low-rank rank.

    X_s = X / s                              # per-channel smoothing (SmoothQuant, LET), optional
    Y   = (X_s L_down^T) L_up^T               # full-precision low-rank branch, optional
        + Qa(X_s R) . Qw(W_R)^T + b          # quantized path: rotation R, residual weight W_R

``weight`` holds ``W_R`` already smoothed, low-rank-subtracted and rotated, so in full
precision ``Y == X W^T + b`` exactly (see :meth:`effective_weight`). This is LSGQuant's
``DRAQ(X H) Q(H^T W_R) + X L1 L2 + b`` with ``Qa`` = DRAQ, and SVDQuant/QuantVSR/QuaRot/
SmoothQuant/MinMax with the pieces turned on or off.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .hadamard import rotate, unrotate
from .plan import LayerSpec
from .quant import quantize_dequantize
from .quantizers import ActQuant, WeightQuant, draq


class InputStats:
    """Per-channel statistics of a layer's input, gathered in one calibration pass.

    ``absmax: (K,)`` running max |x|; ``call_means: list of (K,)`` per-call channel means
    (variance across calls drives LSGQuant's sensitivity); ``sum``/``sumsq`` per channel;
    ``samples: list of (<= max_tokens, K)`` a seeded random subset of each call's tokens
    (float32), for error-based sensitivity and layer-wise training. With ``track_grads``
    (see :meth:`watch_output`), ``probe_sums`` accumulates, over backward passes of random
    output projections ``<v, out>``, ``output_error``: ``<g, dY>^2`` and ``fisher``:
    ``sum g^2 dY^2``, where ``g`` is the gradient w.r.t. this layer's output and ``dY`` the
    layer's own quantization error on the whole call; ``probe_count`` counts the terms.
    """

    def __init__(self, k: int, max_tokens: int = 512) -> None:
        self.k, self.max_tokens = k, max_tokens
        self.samples: list[torch.Tensor] = []
        self.absmax = torch.zeros(k, dtype=torch.float64)
        self.lo = torch.full((), float("inf"), dtype=torch.float64)
        self.hi = torch.full((), float("-inf"), dtype=torch.float64)
        self.sum = torch.zeros(k, dtype=torch.float64)
        self.sumsq = torch.zeros(k, dtype=torch.float64)
        self.count = 0
        self.call_means: list[torch.Tensor] = []
        self.call_absmax: list[torch.Tensor] = []
        self.track_grads = False
        self.probe_sums = {"output_error": 0.0, "fisher": 0.0}
        self.probe_count = 0

    def update(self, x: torch.Tensor) -> None:
        """x: ``(..., K)`` on any device; reductions run there, (K,) results land on the CPU."""
        x = x.detach().reshape(-1, self.k)
        xf = x.float()
        cpu = lambda t: t.double().cpu()  # noqa: E731
        call_absmax = cpu(xf.abs().amax(0))
        self.absmax = torch.maximum(self.absmax, call_absmax)
        self.lo = torch.minimum(self.lo, cpu(xf.amin()))
        self.hi = torch.maximum(self.hi, cpu(xf.amax()))
        s, ss = cpu(xf.sum(0)), cpu((xf * xf).sum(0))
        self.sum += s
        self.sumsq += ss
        self.count += x.shape[0]
        self.call_means.append(s / x.shape[0])
        self.call_absmax.append(call_absmax)
        if self.max_tokens:
            g = torch.Generator().manual_seed(len(self.samples))
            idx = torch.randperm(x.shape[0], generator=g)[: self.max_tokens].sort().values
            self.samples.append(xf[idx.to(x.device)].cpu())

    def watch_output(self, y: torch.Tensor, dy: torch.Tensor) -> torch.Tensor:
        """Accumulate ``probe_sums`` from the gradient reaching ``y: (..., N)`` (this call's
        output) in every later backward pass; ``dy``: the layer's quantization error, same
        shape. Returns ``y`` (made a leaf requiring grad when nothing upstream does)."""
        if not self.track_grads or not torch.is_grad_enabled():
            return y
        if not y.requires_grad:
            y = y.detach().requires_grad_(True)
        dy = dy.detach().float()

        def hook(g: torch.Tensor) -> None:
            g = g.detach().float()
            self.probe_sums["output_error"] += float((g * dy).sum()) ** 2
            self.probe_sums["fisher"] += float((g.pow(2) * dy.pow(2)).sum())
            self.probe_count += 1

        y.register_hook(hook)
        return y

    @property
    def mean(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> torch.Tensor:
        return (self.sumsq / max(self.count, 1) - self.mean**2).clamp_min(0)


class QuantLinear(nn.Module):
    """A linear layer in the project's general quantized form (see module docstring)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, spec: LayerSpec) -> None:
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.spec = spec
        self.register_buffer("smooth", None)
        self.register_buffer("rot_signs", None)
        self.rot_block = 0
        #: the low-rank branch rides in the FP8 GEMM (set by the target pass for per-row FP8 kinds:
        #: :func:`lsgq_compiler.deploy.numerics.lowrank_in_gemm_linear`)
        self.lowrank_in_gemm = False
        self.lr_down: nn.Parameter | None = None
        self.lr_up: nn.Parameter | None = None
        self.wq: WeightQuant | None = None
        self.aq: ActQuant | None = None
        self.stats: InputStats | None = None  # live observer during calibration
        self.calib_stats: InputStats | None = None  # what calibration recorded
        self._wcache: tuple[int, torch.Tensor] | None = None

    @classmethod
    def from_linear(cls, linear: nn.Module, spec: LayerSpec) -> "QuantLinear":
        return cls(linear.weight, getattr(linear, "bias", None), spec)

    # -- transforms (each applied by its own pass; all exact in full precision) --
    def apply_smoothing(self, s: torch.Tensor) -> None:
        """Move a per-input-channel scale ``s: (K,)`` from X to W. Must precede low-rank and rotation."""
        if self.lr_down is not None or self.rot_block:
            raise RuntimeError("smoothing must be applied before the low-rank split and rotation")
        s = s.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            self.weight.mul_(s)
        self.smooth = s if self.smooth is None else self.smooth * s
        self._wcache = None

    def apply_lowrank(self, rank: int) -> None:
        """Split ``W_s = L_up L_down + W_R`` by truncated SVD (rank ``r``); must precede rotation.

        ``L_down: (r, K)``, ``L_up: (N, r)``, both full precision and trainable.
        """
        if self.rot_block:
            raise RuntimeError("the low-rank split must be applied before rotation")
        if rank <= 0:
            return
        w = self.weight.detach().float()
        if w.numel() <= 4_000_000:  # small: exact SVD
            u, sv, vh = torch.linalg.svd(w.double(), full_matrices=False)
        else:  # large (billion-parameter models): randomized SVD, seeded by the caller's RNG
            u, sv, v = torch.svd_lowrank(w, q=min(rank + 16, min(w.shape)), niter=4)
            vh = v.T
        r = min(rank, sv.numel())
        root = sv[:r].sqrt()
        up, down = u[:, :r] * root, root[:, None] * vh[:r]
        dt = self.weight.dtype
        self.lr_up, self.lr_down = nn.Parameter(up.to(dt)), nn.Parameter(down.to(dt))
        with torch.no_grad():
            self.weight.copy_((w.to(up.dtype) - up @ down).to(dt))
        self._wcache = None

    def apply_rotation(self, signs: torch.Tensor, block: int) -> None:
        """Rotate the quantized path by ``R = diag(signs) blockdiag(H_block)``: ``W_R <- W_R R``."""
        with torch.no_grad():
            self.weight.copy_(rotate(self.weight.detach(), signs, block))
        self.rot_signs, self.rot_block = signs.to(device=self.weight.device, dtype=self.weight.dtype), block
        self._wcache = None

    def effective_weight(self) -> torch.Tensor:
        """The full-precision ``W: (N, K)`` this layer computes (quantizers off)."""
        w = self.weight.detach()
        if self.rot_block:
            w = unrotate(w, self.rot_signs, self.rot_block)
        if self.lr_down is not None:
            w = w + self.lr_up.detach() @ self.lr_down.detach()
        if self.smooth is not None:
            w = w / self.smooth
        return w

    # -- runtime --
    def quantized_weight(self) -> torch.Tensor:
        """``Qw(W_R)``, cached while weights do not change and no gradient is needed."""
        if self.wq is None:
            return self.weight
        if torch.is_grad_enabled() and self.weight.requires_grad:
            self._wcache = None
            return self.wq(self.weight)
        key = self.weight._version
        if self._wcache is None or self._wcache[0] != key or self._wcache[1].dtype != self.weight.dtype:
            self._wcache = (key, self.wq(self.weight.detach()))
        return self._wcache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: ``(..., K)`` -> ``(..., N)``."""
        x_in = x
        if self.stats is not None:
            self.stats.update(x)
        if self.smooth is not None:
            x = x / self.smooth
        if self.lowrank_in_gemm and self.lr_down is not None:
            y = self._lowrank_in_gemm(x)
        else:
            y_lr = F.linear(F.linear(x, self.lr_down), self.lr_up) if self.lr_down is not None else None
            if self.rot_block:
                x = rotate(x, self.rot_signs, self.rot_block)
            if self.aq is not None:
                x = self.aq(x)
            y = F.linear(x, self.quantized_weight(), self.bias)
            y = y if y_lr is None else y + y_lr
        if self.stats is not None and self.stats.track_grads and torch.is_grad_enabled():
            with torch.no_grad():
                dy = self.plain_quant_error(x_in)
            y = self.stats.watch_output(y, dy)
        return y

    def _lowrank_in_gemm(self, xs: torch.Tensor) -> torch.Tensor:
        """``xs (..., K)`` smoothed input -> ``(..., N)``: quantized path and low-rank branch in one FP8
        GEMM over ``K + r`` columns, exactly as the deploy kernel computes it."""
        from lsgq_compiler.deploy import numerics as nx

        xr = rotate(xs, self.rot_signs, self.rot_block) if self.rot_block else xs
        with torch.no_grad():
            ws = nx.weight_row_scale(self.weight.detach(), self.wq.kind)
        return nx.lowrank_in_gemm_linear(xr, xs, self.quantized_weight(), ws, self.bias, self.lr_down, self.lr_up)

    def plain_quant_error(self, x: torch.Tensor, channel_absmax: torch.Tensor | None = None) -> torch.Tensor:
        """``Q(X) Q(W)^T - X W^T`` for ``x: (..., K)`` at this layer's planned bits and
        quantizer kinds, without smoothing, rotation or low-rank branch (what quantizing
        this layer alone costs). DRAQ uses ``channel_absmax: (K,)`` (default: this call's)."""
        s = self.spec
        w = self.effective_weight().float()
        wq = quantize_dequantize(w, s.weight_bits, s.weight_symmetric, s.weight_granularity, s.group_size) \
            if s.weight_bits else w
        x = x.to(w.device).float()  # calibration samples live on the CPU
        if s.act_bits is None:
            xq = x
        elif s.act_quantizer.startswith("draq"):
            amax = x.reshape(-1, x.shape[-1]).abs().amax(0) if channel_absmax is None else channel_absmax
            xq = draq(x, s.act_bits, amax.to(x.device).float())
        else:
            xq = quantize_dequantize(x, s.act_bits, s.act_symmetric, s.act_granularity)
        return F.linear(xq, wq) - F.linear(x, w)

    def extra_repr(self) -> str:
        parts = [f"{self.spec.module_path}", f"in={self.in_features}, out={self.out_features}", self.spec.fmt]
        if self.smooth is not None:
            parts.append("smooth")
        if self.lr_down is not None:
            parts.append(f"rank={self.lr_down.shape[0]}")
        if self.rot_block:
            parts.append(f"hadamard={self.rot_block}")
        return ", ".join(parts)


@contextlib.contextmanager
def quantizers_off(gm: nn.Module) -> Iterator[None]:
    """Run ``gm`` in full precision (transforms kept: they are exact) inside the block."""
    mods = [m for m in gm.modules() if isinstance(m, QuantLinear)]
    saved = [(m.wq, m.aq) for m in mods]
    for m in mods:
        m.wq = m.aq = None
    try:
        yield
    finally:
        for m, (wq, aq) in zip(mods, saved):
            m.wq, m.aq = wq, aq
            m._wcache = None


def quant_linears(gm: nn.Module) -> dict[str, QuantLinear]:
    """All QuantLinear submodules keyed by their spec's module path (the user's FQN)."""
    return {m.spec.module_path: m for m in gm.modules() if isinstance(m, QuantLinear)}
