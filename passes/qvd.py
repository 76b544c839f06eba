"""QVD's two mechanisms, designed from the paper's description (its formulas were not
available; both are *readings*, swappable through the recipe options).

Shape notation: ``X: (tokens, K)`` a layer's input, ``W: (N, K)``, ``r_j = max_t |X[t, j]|``.

**SCRI**, scattered channel range integration. Channel ranges ``r_j`` scatter over orders of
magnitude, so with one scale per token most channels use a few of the levels. SCRI pulls
every range towards their geometric mean ``G``: ``s_j = (r_j / G)^beta``, ``X / s``,
``W diag(s)`` (an exact equivalent transformation, applied with the shared smoothing
mechanism). Unlike SmoothQuant it balances the channels against each other, not against the
weight, and ``beta`` (how far the ranges are integrated; 1 = all channels to one range)
is chosen per layer from a grid by the quantized layer-output error on the calibration
tokens, so it never trades more weight error than it removes. Recorded: the channel
coverage ``mean_j r_j / max_j r_j`` before and after.

**HTDQ**, high temporal-discriminability quantization, for skewed features. QVD's case is
the time embedding (skewed after SiLU), shared by all frames: quantized per tensor, the
features of different timesteps collapse onto a few levels. Here (1) time-embedding
layers, when quantized (``keep_fp`` keeps them in full precision by default, and with one
fixed timestep they are constant), get static per-channel asymmetric ranges, so every
channel keeps its own levels; (2) token features whose distribution within a token is
strongly skewed (sample skewness above ``skew_threshold``; e.g. after GELU) get an
asymmetric per-token quantizer whose long tail is clipped at a fraction ``rho`` of the
range, chosen from a grid by the layer-output error: the dense body, where tokens differ
from each other, gets the levels the tail would waste.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import fx, nn

from lsgq_compiler.hadamard import rotate
from lsgq_compiler.quant import quantize_dequantize

from .infra import PassBase, PassContext, PassResult, quant_nodes
from .lbq import learnable_fake_quant

TEMPORAL_FRAGMENTS = ("time_embedder", "time_proj", "timestep_embedder", "time_embed", "emb_layers", "adaln")


def coverage(absmax: torch.Tensor) -> float:
    """Mean fraction of the largest channel range that a channel spans."""
    r = absmax.float().clamp_min(1e-8)
    return float((r / r.max()).mean())


def scri_scale(absmax: torch.Tensor, beta: float) -> torch.Tensor:
    """``s_j = (r_j / G)^beta``, ``G`` the geometric mean of the ranges. absmax: ``(K,)``."""
    r = absmax.float().clamp_min(1e-5)
    return (r / r.log().mean().exp()).pow(beta).clamp(1e-4, 1e4)


def search_tokens(xs: list[torch.Tensor], per_call: int = 128) -> list[torch.Tensor]:
    """Evenly spaced tokens of each calibration call (every frame represented): the searches
    below compare candidates on the same few hundred tokens instead of all sampled ones."""
    return [x[torch.linspace(0, x.shape[0] - 1, min(per_call, x.shape[0])).round().long()] for x in xs]


def _layer_error(xs: list[torch.Tensor], refs: list[torch.Tensor], x_transform, wq: torch.Tensor, aq) -> float:
    """Mean squared error of ``aq(x_transform(x)) wq^T`` against the full-precision ``refs``."""
    return sum(float((F.linear(aq(x_transform(x)), wq) - r).pow(2).mean()) for x, r in zip(xs, refs)) / len(xs)


class SCRI(PassBase):
    """Integrate channel ranges of every quantized layer's input; needs Observe; before
    low-rank, rotation and InsertQuantizers.

    Args:
        betas: candidate integration strengths (0 = leave the layer alone).
    """

    def __init__(self, ctx: PassContext, betas: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)) -> None:
        super().__init__()
        self.ctx, self.betas = ctx, betas

    @torch.no_grad()
    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            s = m.spec
            if not (s.act_bits and s.weight_bits) or m.smooth is not None:
                continue
            st = m.calib_stats
            if st is None or not st.samples:
                raise RuntimeError(f"{s.module_path}: SCRI needs calibration statistics (run Observe first)")
            w = m.weight.detach().float()
            xs = search_tokens(st.samples)
            refs = [F.linear(x, m.effective_weight().float()) for x in xs]

            def aq(x):
                return quantize_dequantize(x, s.act_bits, s.act_symmetric, s.act_granularity)

            errs = {}
            for beta in self.betas:
                sc = scri_scale(st.absmax, beta)
                wq = quantize_dequantize(w * sc, s.weight_bits, s.weight_symmetric, s.weight_granularity,
                                         s.group_size)
                errs[beta] = _layer_error(xs, refs, lambda x, sc=sc: x / sc, wq, aq)
            beta = min(errs, key=errs.get)
            sc = scri_scale(st.absmax, beta)
            if beta > 0:
                m.apply_smoothing(sc)
            s.extra["scri"] = {"beta": beta, "coverage_before": round(coverage(st.absmax), 4),
                               "coverage_after": round(coverage(st.absmax / sc), 4)}
        return PassResult(gm, False)


class ClippedTokenQuant(nn.Module):
    """Dynamic per-token asymmetric quantizer with the tail on the skewed side clipped to
    ``rho`` of the token's range (``tail`` +1: upper, -1: lower). X: ``(..., K)``."""

    def __init__(self, bits: int, rho: float, tail: int) -> None:
        super().__init__()
        self.bits, self.rho, self.tail = bits, rho, tail
        self.mode, self.granularity, self.symmetric = "dynamic", "token", False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lo, hi = x.detach().amin(-1, keepdim=True), x.detach().amax(-1, keepdim=True)
        if self.tail > 0:
            hi = lo + self.rho * (hi - lo)
        else:
            lo = hi - self.rho * (hi - lo)
        return learnable_fake_quant(x, lo, hi, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, rho={self.rho}, tail={'upper' if self.tail > 0 else 'lower'}"


class ChannelStaticQuant(nn.Module):
    """Static per-channel asymmetric quantizer: ranges ``lo, hi: (K,)`` from calibration."""

    def __init__(self, bits: int, lo: torch.Tensor, hi: torch.Tensor) -> None:
        super().__init__()
        self.bits, self.mode, self.granularity, self.symmetric = bits, "static", "channel", False
        self.register_buffer("lo", lo.float())
        self.register_buffer("hi", hi.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return learnable_fake_quant(x, self.lo.to(x.dtype), self.hi.to(x.dtype), self.bits)


def token_skewness(xs: list[torch.Tensor]) -> float:
    """Mean over tokens of the sample skewness across channels. xs: ``(tokens, K)`` each."""
    x = torch.cat(xs).double()
    c = x - x.mean(-1, keepdim=True)
    sd = c.pow(2).mean(-1).sqrt().clamp_min(1e-12)
    return float((c.pow(3).mean(-1) / sd.pow(3)).mean())


class HTDQ(PassBase):
    """Replace the activation quantizer of time-embedding layers (per-channel static) and of
    layers with skewed token features (tail-clipped per-token); after InsertQuantizers.

    Args:
        skew_threshold: |skewness| above which a layer's features count as skewed.
        rhos: candidate clipping fractions of the tail side (1.0 = no clipping).
    """

    def __init__(self, ctx: PassContext, skew_threshold: float = 1.0,
                 rhos: tuple[float, ...] = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5)) -> None:
        super().__init__()
        self.ctx, self.skew_threshold, self.rhos = ctx, skew_threshold, rhos

    @torch.no_grad()
    def call(self, gm: fx.GraphModule) -> PassResult:
        counts = {"temporal": 0, "skewed": 0}
        for _, m in quant_nodes(gm):
            s = m.spec
            if not s.act_bits or m.aq is None:
                continue
            st = m.calib_stats
            if st is None or not st.samples:
                raise RuntimeError(f"{s.module_path}: HTDQ needs calibration statistics (run Observe first)")
            if any(f in s.module_path for f in TEMPORAL_FRAGMENTS):
                x = torch.cat([self._quant_input(m, x) for x in st.samples])
                m.aq = ChannelStaticQuant(s.act_bits, x.amin(0), x.amax(0))
                s.act_quantizer, s.act_granularity, s.act_symmetric = "static", "channel", False
                s.extra["htdq"] = {"kind": "temporal"}
                counts["temporal"] += 1
                continue
            raw = search_tokens(st.samples)
            skew = token_skewness([self._quant_input(m, x) for x in raw])
            if abs(skew) < self.skew_threshold:
                continue
            tail = 1 if skew > 0 else -1
            wq = m.quantized_weight().detach().float()
            refs = [F.linear(x, m.effective_weight().float()) for x in raw]
            errs = {rho: _layer_error(raw, refs, lambda x: self._quant_input(m, x), wq,
                                      ClippedTokenQuant(s.act_bits, rho, tail)) for rho in self.rhos}
            rho = min(errs, key=errs.get)
            m.aq = ClippedTokenQuant(s.act_bits, rho, tail)
            s.act_granularity, s.act_symmetric = "token", False
            s.extra["htdq"] = {"kind": "skewed", "skewness": round(skew, 3), "rho": rho}
            counts["skewed"] += 1
        self.ctx.notes["htdq"] = counts
        return PassResult(gm, False)

    @staticmethod
    def _quant_input(m, x: torch.Tensor) -> torch.Tensor:
        """The quantized path's input for a raw layer input ``x`` (smoothing, rotation)."""
        if m.smooth is not None:
            x = x / m.smooth.float()
        if m.rot_block:
            x = rotate(x, m.rot_signs.float(), m.rot_block)
        return x
