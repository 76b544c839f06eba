"""Hadamard rotation of each marked layer's quantized path (QuaRot, QuantVSR, LSGQuant).

``W_R <- W_R R`` and at run time ``X -> X R`` with ``R = diag(signs) blockdiag(H_b)``,
``b`` the largest power of two dividing ``in_features`` (capped by ``options["hadamard_max_block"]``;
unset: 128 on CUDA deploy targets, see :func:`default_max_block`; block-diagonal construction for
widths that are not powers of two). A width with no usable power-of-two factor (below
``MIN_BLOCK``) leaves that one layer unrotated: ``spec.rotate`` becomes False and
``spec.extra["fallback"]`` says why (in the plan and ``report()``), never a silent skip and
never an abort of the whole compile.
"""
from __future__ import annotations

import zlib

from torch import fx

from lsgq_compiler.hadamard import hadamard_block_size, random_signs

from .infra import PassBase, PassContext, PassResult, quant_nodes

MIN_BLOCK = 8


def default_max_block(ctx: PassContext) -> int | None:
    """``options["hadamard_max_block"]``; unset: 128 on CUDA deploy targets (the block the fused
    rotate+quantize prologue of :mod:`lsgq_compiler.kernels.fp8_prologue` applies in one
    tensor-core tile; larger blocks cost an extra pass there), else None (the largest power of two
    dividing K)."""
    opt = ctx.option("hadamard_max_block", None)
    if opt is not None:
        return int(opt)
    from lsgq_compiler.deploy.targets import TARGETS

    t = TARGETS.get(getattr(ctx.config, "target", "sim"))
    return 128 if t is not None and t.device == "cuda" else None


class Rotate(PassBase):
    """Rotate layers whose spec has ``rotate=True``; must run after smoothing and low-rank."""

    def __init__(self, ctx: PassContext, max_block: int | None = None) -> None:
        super().__init__()
        self.ctx, self.max_block = ctx, max_block

    def call(self, gm: fx.GraphModule) -> PassResult:
        max_block = self.max_block if self.max_block is not None else default_max_block(self.ctx)
        for _, m in quant_nodes(gm):
            s = m.spec
            if not s.rotate or not s.quantized or m.rot_block:
                continue
            block = hadamard_block_size(s.in_features, max_block)
            if block < MIN_BLOCK:
                s.rotate = False
                s.extra["fallback"] = (f"unrotated: in_features={s.in_features} has no power-of-two factor >= "
                                       f"{MIN_BLOCK}, so no block Hadamard rotation can be built")
                continue
            seed = self.ctx.config.seed * 1_000_003 + zlib.crc32(s.module_path.encode())
            m.apply_rotation(random_signs(s.in_features, seed), block)
            s.extra["hadamard_block"] = block
        return PassResult(gm, False)
