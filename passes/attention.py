"""Quantized attention: replace ``aten.scaled_dot_product_attention`` by 8-bit attention.

At video token counts attention costs more than all the linears (ENGINEERING.md), so
end-to-end speed needs it quantized too. Each SDPA node without mask, dropout or causal
flag whose key length is at least ``min_kv_tokens`` becomes ``lsgq::int8_attention``
(INT8 ``Q K^T`` with K smoothing, ``P V`` in V's 16-bit type; see :mod:`lsgq_compiler.kernels.attention`).
Each eligible layer's sensitivity is measured on the calibration batches: the SQNR of its 8-bit
output against full-precision SDPA on the same q, k, v (other attention layers exact), and
layers below ``min_sqnr_db`` stay in full precision. Decisions are recorded per attention module
in ``plan.attention`` (on/off, key length, SQNR, reason); with a given plan its decisions are
reused (``keep``) and nothing is measured.
"""
from __future__ import annotations

import math

import torch
from torch import fx

import lsgq_compiler.kernels.attention  # noqa: F401  (registers torch.ops.lsgq.int8_attention)

from lsgq_compiler.calibration import run_batches

from .infra import PassBase, PassContext, PassResult

SDPA = torch.ops.aten.scaled_dot_product_attention.default
ATTN_KEY = "lsgq_attention"


def attention_path(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    path = list(stack.values())[-1][0] if stack else node.name
    return path[len("model."):] if path.startswith("model.") else path


def _replaceable(n: fx.Node) -> bool:
    kw = dict(n.kwargs)
    extra = list(n.args[3:])
    mask = extra[0] if len(extra) > 0 else kw.get("attn_mask")
    dropout = extra[1] if len(extra) > 1 else kw.get("dropout_p", 0.0)
    causal = extra[2] if len(extra) > 2 else kw.get("is_causal", False)
    gqa = kw.get("enable_gqa", False)
    return mask is None and not dropout and not causal and not gqa


def _scale(n: fx.Node) -> float:
    qv = n.args[0].meta.get("val")
    return float(n.kwargs.get("scale") or float(qv.shape[-1]) ** -0.5)


def attention_sqnr(gm: fx.GraphModule, nodes: dict[str, fx.Node], batches: list[tuple[tuple, dict]],
                   progress: bool = False) -> dict[str, float]:
    """SQNR (dB) of ``lsgq::int8_attention`` against SDPA at each of ``nodes`` (path -> SDPA
    node), on ``batches``: each node computes both on its own q, k, v ``(B, H, N, D)`` and passes
    the full-precision result on (the other attention layers add no error, the linears run as
    quantized so far), so every layer's figure is its own error. ``gm`` is restored."""
    sums = {p: [0.0, 0.0] for p in nodes}
    saved = {p: n.target for p, n in nodes.items()}

    def probe(path: str, scale: float):
        def run(q, k, v, *args, **kwargs):
            ref = SDPA(q, k, v, *args, **kwargs)
            out = torch.ops.lsgq.int8_attention(q, k, v, scale, True)
            r = ref.double()
            sums[path][0] += float(r.pow(2).sum())
            sums[path][1] += float((r - out.double()).pow(2).sum())
            return ref
        return run

    try:
        for p, n in nodes.items():
            n.target = probe(p, _scale(n))
        gm.recompile()
        with torch.no_grad():
            run_batches(gm, batches, desc="attention sensitivity", progress=progress)
    finally:
        for p, n in nodes.items():
            n.target = saved[p]
        gm.recompile()
    return {p: (10.0 * math.log10(s / e) if e > 0 else math.inf) for p, (s, e) in sums.items()}


class QuantizeAttention(PassBase):
    """Swap eligible SDPA nodes for 8-bit attention, layer by layer by measured sensitivity.

    Args:
        min_kv_tokens: leave attentions over fewer keys (e.g. cross-attention to text) alone.
        keep: attention module paths kept in full precision (a given plan's decisions).
        min_sqnr_db: layers whose 8-bit output is below this SQNR on the calibration batches stay
            in full precision (needs ``ctx`` with calibration batches; skipped when ``measure`` is False).
        calib_batches: how many calibration batches the measurement uses.
        measure: measure sensitivity (False: eligibility and ``keep`` decide alone).
    """

    def __init__(self, ctx: PassContext | None = None, min_kv_tokens: int = 256, keep: tuple[str, ...] = (),
                 min_sqnr_db: float = 25.0, calib_batches: int = 2, measure: bool = True) -> None:
        super().__init__()
        self.ctx, self.min_kv_tokens, self.keep = ctx, min_kv_tokens, set(keep)
        self.min_sqnr_db, self.calib_batches, self.measure = float(min_sqnr_db), int(calib_batches), measure

    def call(self, gm: fx.GraphModule) -> PassResult:
        records: dict[str, dict] = {}
        eligible: dict[str, fx.Node] = {}
        for n in gm.graph.nodes:
            if n.op != "call_function" or n.target != SDPA:
                continue
            path = attention_path(n)
            qv, kv = n.args[0].meta.get("val"), n.args[1].meta.get("val")
            n_kv = int(kv.shape[-2]) if kv is not None else 0
            records[path] = {"quantized": False, "kv_tokens": n_kv, "format": "fp"}
            if not _replaceable(n) or qv is None:
                records[path]["reason"] = "mask, dropout, causal or GQA"
            elif n_kv < self.min_kv_tokens:
                records[path]["reason"] = f"{n_kv} keys < min_kv_tokens={self.min_kv_tokens}"
            elif path in self.keep:
                records[path]["reason"] = "kept in full precision by the given plan"
            else:
                eligible[path] = n
        batches = self.ctx.calib[: max(self.calib_batches, 1)] if self.ctx is not None and self.measure else []
        measured = attention_sqnr(gm, eligible, batches, self.ctx.progress) if eligible and batches else {}
        modified = False
        for path, n in eligible.items():
            rec = records[path]
            if path in measured:
                rec["sqnr_db"] = round(measured[path], 2)
                if measured[path] < self.min_sqnr_db:
                    rec["reason"] = f"SQNR {measured[path]:.1f} dB < min_sqnr_db={self.min_sqnr_db:g}"
                    continue
            rec.update(quantized=True, format="int8-qk/16bit-pv")
            scale = _scale(n)
            with gm.graph.inserting_before(n):
                new = gm.graph.call_function(torch.ops.lsgq.int8_attention.default,
                                             (n.args[0], n.args[1], n.args[2], float(scale), True))
            new.meta.update(n.meta)
            new.meta[ATTN_KEY] = rec
            n.replace_all_uses_with(new)
            gm.graph.erase_node(n)
            modified = True
        if self.ctx is not None:
            self.ctx.notes["attention"] = records
        return PassResult(gm, modified)
