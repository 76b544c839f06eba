"""LBA, QuantVSR's learnable bias alignment: a per-output-channel bias ``lba: (N,)`` added to
a quantized layer's output, trained alone (group ``lba`` of
:class:`~.train_params.TrainParams`) to absorb the *biased* part of the quantization error
(its mean over tokens), which per-token rounding does not average out.

``Y = QuantLinear(X) + lba`` while quantizers are on; in full precision (quantizers off)
the term is left out, so the layer stays exactly ``X W^T + b``. Lowering folds ``lba``
into ``b``.
"""
from __future__ import annotations

import torch
from torch import fx, nn

from lsgq_compiler.qlinear import QuantLinear

from .infra import PassBase, PassResult, quant_nodes


class BiasAlignedLinear(QuantLinear):
    """A :class:`QuantLinear` with a learnable output bias alignment ``lba: (N,)``."""

    lba: nn.Parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        if self.wq is None and self.aq is None:
            return y
        return y + self.lba.to(y.dtype)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", lba"


def add_bias_alignment(m: QuantLinear) -> BiasAlignedLinear:
    """Give ``m`` a zero-initialised ``lba`` in place (class swap, as ``torch.nn.utils.parametrize`` does)."""
    if not isinstance(m, BiasAlignedLinear):
        if type(m) is not QuantLinear:
            raise TypeError(f"{m.spec.module_path}: LBA applies to a plain QuantLinear, got {type(m).__name__}")
        m.__class__ = BiasAlignedLinear
        m.lba = nn.Parameter(torch.zeros(m.out_features, dtype=m.weight.dtype))
    return m


class LBA(PassBase):
    """Add ``lba`` to every quantized layer. Idempotent. Train it with ``TrainParams(ctx, "lba", ...)``."""

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            if m.spec.quantized:
                add_bias_alignment(m)
                m.spec.extra["lba"] = True
        return PassResult(gm, False)
