"""DRAQ: LSGQuant's Dynamic Range Adaptive Quantizer on every quantized linear's input.

The quantizer itself is :func:`lsgq_compiler.quantizers.draq` (online per-channel range,
per-token quantization, range restored). Calibration statistics come from the shared
:class:`~lsgq_compiler.passes.observe.Observe` pass, which records per-layer, per-channel
input statistics in one pass over the calibration set.

Deployable form (lowered by the backends): ``X^ W^T = (d_t / qmax) * Q . (W diag(s_c))^T``,
so an integer GEMM needs ``W diag(s_c)`` requantized per call: O(N K) against the
GEMM's O(M N K).
"""
from __future__ import annotations

from torch import fx

from .infra import PassBase, PassResult, quant_nodes, specs


class DRAQ(PassBase):
    """Switch every quantized layer's activation quantizer to DRAQ.

    Args:
        static: use the calibrated per-channel range (``draq_static``, the SmoothQuant
            limit) instead of the online one.
    """

    def __init__(self, static: bool = False) -> None:
        super().__init__()
        self.static = static

    def call(self, gm: fx.GraphModule) -> PassResult:
        for s in specs(gm).values():
            if s.act_bits:
                s.act_quantizer = "draq_static" if self.static else "draq"
                s.act_symmetric = True
                s.act_granularity = "token"
        for _, m in quant_nodes(gm):
            m.aq = None  # quantizers are (re)attached by InsertQuantizers
        return PassResult(gm, False)
