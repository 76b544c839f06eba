"""Restrict every layer to what the deploy target runs, on the kernel's exact grid.

For ``config.target != "sim"`` each quantized layer's format is mapped to a kind of
:mod:`lsgq_compiler.deploy.targets` (e.g. on ``cuda-sm90``: W4 with K a multiple of 128 ->
int4 symmetric per row x FP8 e4m3 per-row activations, on ``cuda-sm90-g128`` int4 in groups of
128 with bf16 scales; W6/W8 -> FP8
rowwise; A4 -> FP8 per row), and the layer's quantizers become
:class:`~lsgq_compiler.deploy.numerics.TargetWeightQuant` / ``TargetActQuant``, which compute
exactly what the kernel computes. DRAQ's per-call channel range has no kernel: it becomes a
static channel scale from calibration, folded into the weight as smoothing (SmoothQuant form,
``s = amax_x^a / amax_w^(1-a)``, ``a = options["target_draq_alpha"]``, default 0.5: the plain
DRAQ static scale, ``a = 1``, would move activation outliers into the int4 weight groups).
Each layer's ``spec.extra["target"]`` records what the recipe asked for and what it became;
``report()`` shows it.

The pass is idempotent and inserted by :func:`insert_target_passes` before the recipe's first
low-rank / rotation / quantizer pass (specs converted, DRAQ folded before the low-rank split),
after every ``InsertQuantizers`` (quantizers replaced before any training) and at the end
(``final``: low-rank factors rounded to bf16, their deploy dtype, and quantizers re-checked).

Per-row FP8 kinds (``int4r_fp8``, ``fp8_row``) carry a layer's low-rank branch inside the FP8 GEMM
(``K + rank`` columns under one activation row scale, :func:`~lsgq_compiler.deploy.numerics.lowrank_in_gemm_linear`),
so training sees that rounding; ``options["lowrank_in_gemm"] = False`` keeps it as bf16 GEMMs beside the kernel.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import fx

from lsgq_compiler.deploy.numerics import (KIND_QUANTIZERS, LOWRANK_IN_GEMM_KINDS, TargetActQuant, TargetWeightQuant,
                                           snap_bf16)
from lsgq_compiler.deploy.targets import KINDS, TARGETS, resolve
from lsgq_compiler.errors import user_error

from .infra import PassBase, PassContext, PassResult, quant_nodes

#: recipes whose quantizers or layers have no deploy form (learned bounds, extra branches)
UNSUPPORTED = {"passionsr": "learnable quantizer bounds and LET", "qartsr": "learnable quantizer bounds",
               "qdit4sr": "H-SVD block rank-1 terms", "quantvsr": "LBA bias alignment",
               "qvd": "HTDQ clipped / static per-channel activation quantizers"}


def _asked(spec) -> dict[str, Any]:
    return {"format": spec.fmt, "weight": f"{spec.weight_granularity}{'' if spec.group_size is None else spec.group_size}"
            f" {'sym' if spec.weight_symmetric else 'asym'}" if spec.weight_bits else "-",
            "act": f"{spec.act_quantizer} {spec.act_granularity}" if spec.act_bits else "-"}


class ApplyTarget(PassBase):
    """Map each layer's format onto ``ctx.config.target``'s kernels (see module docstring).

    Args:
        final: also round low-rank factors to bf16 (the deploy storage) and mark the plan final.
    """

    def __init__(self, ctx: PassContext, final: bool = False) -> None:
        super().__init__()
        self.ctx, self.final = ctx, final

    def call(self, gm: fx.GraphModule) -> PassResult:
        target = self.ctx.config.target
        alpha = float(self.ctx.option("target_draq_alpha", 0.5))
        in_gemm = bool(self.ctx.option("lowrank_in_gemm", True))
        for _, m in quant_nodes(gm):
            s = m.spec
            rec = s.extra.get("target")
            if rec is None or rec.get("target") != target:
                if not s.quantized:
                    continue
                kind, note = resolve(target, s.weight_bits, s.act_bits, s.in_features)
                rec = {"target": target, "kind": kind, "asked": _asked(s), "became": KINDS[kind]["format"],
                       "kernel": KINDS[kind]["op"], "real_kernel": TARGETS[target].real[kind], "note": note}
                if s.act_bits and s.act_quantizer in ("draq", "draq_static"):
                    rec["draq_fold_alpha"] = alpha
                s.extra["target"] = rec
            kind = rec["kind"]
            k = KINDS[kind]
            s.weight_bits, s.act_bits = k["weight_bits"], k["act_bits"]
            s.weight_symmetric = True
            s.weight_granularity, s.group_size = ("group", 128) if kind in ("int4_fp8", "int4_weight") else ("row", None)
            if s.act_bits:
                s.act_quantizer, s.act_granularity, s.act_symmetric = "dynamic", "token", True
            if "draq_fold_alpha" in rec and not rec.get("draq_folded"):
                self._fold_draq(m, rec)
            wk, ak = KIND_QUANTIZERS[kind]
            if not isinstance(m.wq, TargetWeightQuant) or m.wq.kind != wk:
                m.wq = TargetWeightQuant(wk)
            if ak is None:
                m.aq = None
            elif not isinstance(m.aq, TargetActQuant) or m.aq.kind != ak:
                m.aq = TargetActQuant(ak)
            m.lowrank_in_gemm = wk in LOWRANK_IN_GEMM_KINDS and ak == "fp8_row" and in_gemm
            m._wcache = None
            m.kernel_info = {"backend": f"fake-quant (target {target})", "kernel": f"simulated {rec['kernel']}",
                             "real_kernel": False, "note": rec["note"], "target": target, "asked": rec["asked"]["format"],
                             "became": rec["became"]}
            if self.final and m.lr_down is not None:
                with torch.no_grad():
                    m.lr_down.copy_(snap_bf16(m.lr_down))
                    m.lr_up.copy_(snap_bf16(m.lr_up))
                rec["lowrank_dtype"] = "bfloat16"
                rec["lowrank"] = ("FP8 in the GEMM (K + rank columns, one row scale)" if m.lowrank_in_gemm
                                  else "bf16 GEMMs beside the kernel")
        return PassResult(gm, False)

    def _fold_draq(self, m, rec: dict) -> None:
        if m.lr_down is not None or m.rot_block:
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + \
                "DRAQ channel range dropped (low-rank/rotation already applied): per-token FP8 only"
            rec["draq_folded"] = "dropped"
            return
        if m.smooth is not None:  # re-applied plan with restored tensors: already folded
            rec["draq_folded"] = True
            return
        st = m.calib_stats
        if st is None or st.count == 0:
            rec["note"] = (rec["note"] + "; " if rec["note"] else "") + \
                "no calibration statistics: DRAQ channel range dropped, per-token quantization only"
            rec["draq_folded"] = "dropped"
            return
        a = rec["draq_fold_alpha"]
        x_amax = st.absmax.float().clamp_min(1e-5).to(m.weight.device)
        w_amax = m.weight.detach().float().abs().amax(0).clamp_min(1e-5)
        s = (x_amax.pow(a) / w_amax.pow(1 - a)).clamp_min(1e-5)
        m.apply_smoothing(s)  # X / s, W diag(s): exact in full precision
        m.spec.smooth_alpha = a
        rec["draq_folded"] = True
        rec["note"] = (rec["note"] + "; " if rec["note"] else "") + \
            f"DRAQ per-call channel range -> static channel scale (calibrated, alpha {a:g}) folded into the weight"


def target_config(config):
    """``config`` with ``allowed_bits`` limited to the target's weight widths (4 and 8), so bit
    allocation chooses among formats the target runs, under the same size budget."""
    import dataclasses

    allowed = tuple(b for b in config.allowed_bits if b in (4, 8)) or (4, 8)
    return dataclasses.replace(config, allowed_bits=allowed)


def insert_target_passes(passes: list, ctx: PassContext) -> list:
    """The recipe's ``passes`` with :class:`ApplyTarget` inserted (see module docstring);
    unchanged for ``target="sim"``. Refuses recipes with no deploy form."""
    if ctx.config.target == "sim":
        return passes
    if ctx.config.recipe in UNSUPPORTED:
        raise user_error(f"recipe {ctx.config.recipe!r} cannot target {ctx.config.target!r}: its "
                         f"{UNSUPPORTED[ctx.config.recipe]} have no kernel form",
                         "use target='sim' for this recipe, or a recipe such as minmax, lsgquant, smoothquant, "
                         "quarot, svdquant or viditq")
    from .insert_quantizers import InsertQuantizers
    from .lowrank import LowRank
    from .rotate import Rotate

    out: list = []
    first_done = False
    for p in passes:
        if not first_done and isinstance(p, (LowRank, Rotate, InsertQuantizers)):
            out.append(ApplyTarget(ctx))
            first_done = True
        out.append(p)
        if isinstance(p, InsertQuantizers):
            out.append(ApplyTarget(ctx))
    out.append(ApplyTarget(ctx, final=True))
    return out
