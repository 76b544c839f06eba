"""Attach weight and activation fake quantizers to each QuantLinear per its LayerSpec."""
from __future__ import annotations

from torch import fx

from lsgq_compiler.quantizers import ActQuant, WeightQuant

from .infra import PassBase, PassResult, quant_nodes


class InsertQuantizers(PassBase):
    """Set ``module.wq``/``module.aq`` from ``module.spec`` (None bits: no quantizer).

    Static activation modes take their ranges from the calibration statistics
    (``module.stats``), which must have been gathered before.
    """

    def call(self, gm: fx.GraphModule) -> PassResult:
        for _, m in quant_nodes(gm):
            s = m.spec
            m.wq = WeightQuant(s.weight_bits, s.weight_granularity, s.weight_symmetric, s.group_size) \
                if s.weight_bits else None
            m.aq = ActQuant(s.act_bits, s.act_quantizer, s.act_granularity, s.act_symmetric) if s.act_bits else None
            if m.aq is not None and m.aq.mode in ("static", "draq_static"):
                if m.calib_stats is None or m.calib_stats.count == 0:
                    raise RuntimeError(f"{s.module_path}: static activation quantizer needs calibration statistics")
                if m.aq.mode == "static":
                    lo, hi = _static_range(m)
                    m.aq.set_static_range(lo, hi)
                else:
                    m.aq.channel_scale = m.calib_stats.absmax.float().clamp_min(1e-8)
            m._wcache = None
        return PassResult(gm, False)


def _static_range(m):
    """Calibrated range of the quantized path's input (after smoothing/rotation, if any)."""
    import torch

    from lsgq_compiler.hadamard import rotate

    st = m.calib_stats
    if m.smooth is None and not m.rot_block:
        return st.lo.float(), st.hi.float()
    # channel-wise bounds do not survive a rotation; bound by the transformed absmax.
    amax = st.absmax.float()
    if m.smooth is not None:
        amax = amax / m.smooth.float()
    if m.rot_block:
        amax = rotate(torch.diag(amax), m.rot_signs.float(), m.rot_block).abs().sum(0).clamp_max(amax.norm())
    a = amax.max()
    return -a, a
