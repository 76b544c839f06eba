"""H-SVD, Q-DiT4SR's hierarchical SVD: a global low-rank branch plus block-wise rank-1 terms
on the residual, both in full precision, under a matched parameter budget.

Shape notation: ``W_R: (N, K)`` the rotated residual after the global split, ``B`` the
square tile size, ``(N/B) x (K/B)`` tiles.

    W H = L_up L_down H  +  sum over tiles (i, j) of  u_ij v_ij^T  (placed at tile (i, j))  +  Q
          global (shared LowRank pass)      local (this pass)                                 quantized

The global part is the shared low-rank split (SVD of ``W`` = SVD of ``W H`` rotated back,
since ``H`` is orthogonal); this pass runs after the shared Rotate pass and takes the top
singular pair of every ``B x B`` tile of the rotated residual. The layer computes the local
part on the rotated input: ``y_ij = u_ij (v_ij . (X H)_j)``.

*Reading* of "matched parameter budget" (not spelled out in the paper): the budget is that
of a plain rank-r SVD branch with the given parameter ``share`` of the layer (SVDQuant's
and LSGQuant's rank 32 at width 3072: ~2%); a fraction ``block_fraction`` (half) of it goes
to the tiles, the rest to the global rank. Tiles cost ``2 B`` each, ``2 N K / B`` in all,
so ``B`` is the smallest common divisor of ``N`` and ``K`` with ``2 N K / B`` within the
tiles' budget. When no tile size fits the budget (toy widths), the layer gets no tiles.
"""
from __future__ import annotations

import math

import torch
from torch import fx, nn

from lsgq_compiler.hadamard import rotate, unrotate
from lsgq_compiler.qlinear import QuantLinear

from .infra import PassBase, PassResult, quant_nodes


def block_size_for_budget(n: int, k: int, params: float) -> int | None:
    """Smallest square tile ``B`` dividing ``n`` and ``k`` with ``2 n k / B <= params``."""
    g = math.gcd(n, k)
    for b in range(1, g + 1):
        if g % b == 0 and 2 * n * k / b <= params:
            return b
    return None


def blockwise_rank1(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top singular pair of each ``block x block`` tile of ``w: (N, K)``.

    Returns ``u: (N/B, K/B, B)`` and ``v: (N/B, K/B, B)`` with tile ``(i, j)`` ~ ``outer(u_ij, v_ij)``.
    """
    n, k = w.shape
    tiles = w.double().reshape(n // block, block, k // block, block).permute(0, 2, 1, 3)
    u, s, vh = torch.linalg.svd(tiles, full_matrices=False)
    root = s[..., 0].sqrt()
    return (u[..., :, 0] * root[..., None]).to(w.dtype), (vh[..., 0, :] * root[..., None]).to(w.dtype)


def blocks_dense(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``(N, K)`` matrix of the tiles' rank-1 terms."""
    nb, kb, b = u.shape
    return torch.einsum("ija,ijc->iajc", u, v).reshape(nb * b, kb * b)


class HSVDLinear(QuantLinear):
    """A :class:`QuantLinear` plus the full-precision block-wise rank-1 branch ``blk_u, blk_v``
    (acting on the smoothed, rotated input, like the quantized path)."""

    blk_u: nn.Parameter
    blk_v: nn.Parameter

    def _rotated(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        return rotate(x, self.rot_signs, self.rot_block) if self.rot_block else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        nb, kb, b = self.blk_u.shape
        xr = self._rotated(x).reshape(*x.shape[:-1], kb, b)
        z = torch.einsum("...jc,ijc->...ij", xr, self.blk_v.to(x.dtype))
        return y + torch.einsum("...ij,ija->...ia", z, self.blk_u.to(x.dtype)).reshape(*x.shape[:-1], nb * b)

    def effective_weight(self) -> torch.Tensor:
        blk = blocks_dense(self.blk_u.detach(), self.blk_v.detach())
        if self.rot_block:
            blk = unrotate(blk, self.rot_signs, self.rot_block)
        if self.smooth is not None:
            blk = blk / self.smooth
        return super().effective_weight() + blk

    def extra_repr(self) -> str:
        return super().extra_repr() + f", blocks={self.blk_u.shape[2]}"


def add_block_rank1(m: QuantLinear, block: int) -> HSVDLinear:
    """Split the tiles' rank-1 terms off ``m.weight`` (exact in full precision), in place
    (class swap, as ``torch.nn.utils.parametrize`` does)."""
    if type(m) is not QuantLinear:
        raise TypeError(f"{m.spec.module_path}: H-SVD applies to a plain QuantLinear, got {type(m).__name__}")
    if m.in_features % block or m.out_features % block:
        raise ValueError(f"{m.spec.module_path}: tile {block} does not divide ({m.out_features}, {m.in_features})")
    u, v = blockwise_rank1(m.weight.detach(), block)
    with torch.no_grad():
        m.weight.sub_(blocks_dense(u, v))
    m.__class__ = HSVDLinear
    m.blk_u, m.blk_v = nn.Parameter(u), nn.Parameter(v)
    m._wcache = None
    return m


class HSVD(PassBase):
    """Add the block-wise rank-1 branch to every quantized layer; after LowRank and Rotate.

    Args:
        share: the matched budget as a share of the layer's parameters (default: rank 32 at
            width 3072 = 2.08%).
        block_fraction: part of the budget for the tiles (the global rank takes the rest).
        block: force a tile size (must divide both dims); ignores the budget.
    """

    def __init__(self, share: float = 2 * 32 / 3072, block_fraction: float = 0.5, block: int | None = None) -> None:
        super().__init__()
        self.share, self.block_fraction, self.block = share, block_fraction, block

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            s = m.spec
            if s.weight_bits is None or isinstance(m, HSVDLinear):
                continue
            n, k = s.out_features, s.in_features
            b = self.block or block_size_for_budget(n, k, self.share * self.block_fraction * n * k)
            if b is None:
                s.extra["hsvd"] = {"block": None, "why": "no tile size fits the budget"}
                continue
            add_block_rank1(m, b)
            lr = s.rank * (n + k)
            s.extra["hsvd"] = {"block": b, "tiles": (n // b) * (k // b), "global_rank": s.rank,
                               "share": round((lr + 2 * n * k / b) / (n * k), 5)}
        return PassResult(gm, False)
